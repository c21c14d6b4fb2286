"""Errors a user can fix: the command line prints them as one sentence and exits non-zero.

Raise `InputError` for bad input (files, lines, shapes, flags), never for bugs.
"""

from __future__ import annotations


class InputError(ValueError):
    """Something the user passed in is wrong; the message names the file (and line)."""


class DiskFullError(InputError):
    """A write ran out of space (or quota); the message names the file. Nothing partial is kept."""
