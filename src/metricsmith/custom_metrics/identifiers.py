"""The strict character sets of every identifier a custom metric carries.

Principal ids (users, organizations, teams), slugs and the column / model names that end
up in a generated dbt model are checked here, on every path that accepts them (CLI, Python
API, ``create_metric_definition``, and again when a model file is written).
Free text (a metric's name and description) never reaches a generated file: it stays in
PostgreSQL. See docs/custom_metrics.md, "What reaches dbt".
"""

from __future__ import annotations

import re

from metricsmith.custom_metrics.errors import InvalidIdentifier

#: users, organizations, teams: letters, digits and ``_ . @ + -``, starting with a letter or digit
PRINCIPAL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}")
PRINCIPAL_RULE = "1-64 letters, digits or _ . @ + -, starting with a letter or digit"
#: metric slugs (also part of the generated model's name ``cm_<slug>__v<version>``)
SLUG = re.compile(r"[a-z][a-z0-9_]{0,49}")
SLUG_RULE = "1-50 lowercase letters, digits or _, starting with a letter"
#: column, model and source names written into a generated model
NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
#: longest name / description stored (they are never rendered, only stored and printed)
MAX_NAME_LENGTH = 200
MAX_DESCRIPTION_LENGTH = 4000


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def principal_id(value: object, kind: str = "user id") -> str:
    """``value`` if it is a valid user / organization / team id, else :class:`InvalidIdentifier`."""
    if not isinstance(value, str) or not PRINCIPAL_ID.fullmatch(value):
        raise InvalidIdentifier(f"{kind} {_shown(value)} is not allowed: use {PRINCIPAL_RULE}")
    return value


def slug(value: object) -> str:
    if not isinstance(value, str) or not SLUG.fullmatch(value):
        raise InvalidIdentifier(f"slug {_shown(value)} is not allowed: use {SLUG_RULE}")
    return value


def name(value: object, kind: str = "name") -> str:
    """A column / model / source name that may be written into a generated model."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise InvalidIdentifier(f"{kind} {_shown(value)} is not a plain lowercase SQL name")
    return value


def version(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
        raise InvalidIdentifier(f"version {_shown(value)} is not a positive integer")
    return value


def free_text(value: str, kind: str, max_length: int, *, newlines: bool) -> str:
    """Stored verbatim (never rendered); refused only when too long or holding control characters."""
    if len(value) > max_length:
        raise InvalidIdentifier(f"{kind} is longer than {max_length} characters ({len(value)})")
    allowed = {"\n", "\t"} if newlines else set()
    bad = next((c for c in value if (ord(c) < 32 or ord(c) == 127) and c not in allowed), None)
    if bad is not None:
        raise InvalidIdentifier(f"{kind} holds a control character ({bad!r}); use plain text")
    return value
