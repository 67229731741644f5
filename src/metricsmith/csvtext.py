"""Rows as CSV text (header line first, None as an empty cell): the one writer behind the API's
``format=csv`` and the CLI's ``--format csv``; each passes how it spells a cell."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any


def csv_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[str],
             cell: Callable[[Any], Any] = str) -> str:
    """``rows`` as CSV over ``columns`` (a missing key is an empty cell, like None), each other
    value written as ``cell(value)``; lines end with ``\\n``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else cell(row.get(c)) for c in columns])
    return out.getvalue()
