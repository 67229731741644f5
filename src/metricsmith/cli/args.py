"""Argument types shared by every command group: one date parser (one message), months, years.

Each is an argparse ``type``: a bad value is a usage error (exit 2) naming the value and the
expected form, the same in every command.
"""

from __future__ import annotations

import argparse
import re
from datetime import date

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_MONTH = re.compile(r"\d{4}-\d{2}")
YEARS = (1900, 9999)


def day(text: str) -> date:
    """A calendar day written YYYY-MM-DD (nothing else: no week dates, no compact forms)."""
    value = text.strip()
    if _DAY.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)")


def day_or_month(text: str) -> date:
    """A day (YYYY-MM-DD), or a month (YYYY-MM) meaning its first day."""
    value = text.strip()
    if _MONTH.fullmatch(value):
        try:
            return date.fromisoformat(f"{value}-01")
        except ValueError:
            pass
    try:
        return day(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD) or a month (YYYY-MM)") from None


def year(text: str) -> int:
    """A calendar year, 1900 .. 9999."""
    value = text.strip()
    if value.isdigit() and YEARS[0] <= int(value) <= YEARS[1]:
        return int(value)
    raise argparse.ArgumentTypeError(f"{text!r} is not a year ({YEARS[0]}..{YEARS[1]})")


day.__name__, day_or_month.__name__, year.__name__ = "date", "date or month", "year"
