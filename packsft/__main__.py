"""`python -m packsft` and the `packsft` command: where the command is a pack that will likely run a pool of workers,
their fork server starts from the raw arguments (run/fork_server.py `start_for_arguments`) before the CLI is imported
(click and packsft's configuration, 50-70 ms that the server's imports then overlap), then the CLI runs (cli.run)."""

import sys
from typing import NoReturn

from packsft.run.fork_server import start_for_arguments


def main() -> NoReturn:
    start_for_arguments(sys.argv[1:])
    # Imported here, after the fork server started (this module is the CLI's edge, as cli is).
    from packsft.cli import run

    run()


# Guarded: worker processes are spawned and re-import this module as __mp_main__.
if __name__ == "__main__":
    main()
