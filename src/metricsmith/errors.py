"""Errors the CLI prints as one clear line (exit status 2) instead of a traceback."""

from __future__ import annotations


class UserFacingError(RuntimeError):
    """Something the user can fix: the message says what and how."""
