"""The one exception type for user mistakes: main.py prints it as one line and exits 2; the commands' argument
parser, whose mistakes are one line too."""

import argparse
from typing import NoReturn


class UserError(Exception):
    """A mistake the user can fix (config, override, data, paths); never a bug of ours."""

    def __init__(self, message: str) -> None:
        # A DataLoader worker's error reaches the main process re-built from "Caught UserError in
        # DataLoader worker process N. Original Traceback ...": keep only the original message,
        # which the traceback's last line holds as "utils.errors.UserError: <message>".
        if message.startswith("Caught ") and "\nOriginal Traceback" in message:
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


class TrainingStopped(Exception):
    """Training cannot go on (a non-finite loss); the message says where and what to try."""


class RunInterrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved and the same command resumes."""


class Parser(argparse.ArgumentParser):
    """argparse with a mistake in one line, as every other mistake is (the usage is in --help)."""

    def error(self, message: str) -> NoReturn:
        typed = "unrecognized arguments: --" in message and self.prog == "main.py"  # a run's --max_epoch=3
        keys = " (config keys go without '--': max_epoch=3)" if typed else ""
        self.exit(2, f"error: {self.prog}: {message}{keys}; see {self.prog} --help\n")
