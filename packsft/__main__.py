from packsft.cli import run

# Guarded: worker processes are spawned and re-import this module as __mp_main__.
if __name__ == "__main__":
    run()
