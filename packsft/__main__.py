from packsft.cli import main

main()
