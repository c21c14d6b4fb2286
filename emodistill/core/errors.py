"""Errors a user can fix: the command line prints them as one sentence and exits non-zero.

Raise `InputError` for bad input (files, lines, shapes, flags), never for bugs.
"""

from __future__ import annotations


class InputError(ValueError):
    """Something the user passed in is wrong; the message names the file (and line). A line
    break that the input itself put into the message (a config field whose name holds one, say)
    is shown escaped, so the message stays one line."""

    def __init__(self, message: object = "") -> None:
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))


class DiskFullError(InputError):
    """A write ran out of space (or quota); the message names the file. Nothing partial is kept."""
