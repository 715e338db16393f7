"""argparse with one-line errors, shared by the `latentdiff` command, `python -m latentdiff.hub` and the training
entry points (which must not import the CLI module)."""

from __future__ import annotations

import argparse
from typing import NoReturn

# Library errors that mean "the user asked for something that cannot be done": one line, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, OSError)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block), so bad use reads like the library's own errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
