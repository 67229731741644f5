"""Message templates: Jinja in a sandbox that sees only the alert's own fields.

A template is checked when the rule file loads: it must parse, name no variable but the
:data:`FIELDS`, and render in the sandbox against sample values (so attribute tricks like
``''.__class__`` fail at load time, not at 3 a.m.). Rendering uses the same sandboxed
environment with ``StrictUndefined`` and no globals at all.
"""

from __future__ import annotations

from typing import Any

import jinja2
from jinja2 import meta
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from metricsmith.alerts.errors import ExpressionError

#: what a message template may use: the alert's own fields, nothing else
FIELDS = ("rule", "kind", "severity", "status", "labels", "value", "threshold", "expr", "summary",
          "started_at", "resolved_at", "description")
DEFAULT_MESSAGE = "[{{ severity }}] {{ rule }} {{ status }}: {{ summary }}"
MAX_LENGTH = 4000

class _Sandbox(SandboxedEnvironment):
    """The sandbox, also refusing ``**`` and repeating text or lists with ``*`` (memory bombs)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" or isinstance(left, str | list | tuple) or isinstance(right, str | list | tuple):
            raise SecurityError(f"the operator {operator} is not allowed here in a message template")
        return super().call_binop(context, operator, left, right)


_ENV = _Sandbox(undefined=jinja2.StrictUndefined, autoescape=False)
_ENV.globals.clear()
_ENV.filters = {k: v for k, v in _ENV.filters.items()
                if k in ("default", "d", "round", "int", "float", "upper", "lower", "title", "trim",
                         "truncate", "format", "join", "length", "abs", "replace", "string", "dictsort")}
_ENV.tests = {k: v for k, v in _ENV.tests.items() if k in ("none", "defined", "number", "string")}

SAMPLE: dict[str, Any] = {
    "rule": "sample", "kind": "metric_threshold", "severity": "warning", "status": "firing",
    "labels": {"grain": "week"}, "value": 1.5, "threshold": 1.0, "expr": "x < 1", "summary": "sample",
    "started_at": "2026-01-01T00:00:00+00:00", "resolved_at": None, "description": "",
}


def check(source: object) -> str:
    """The template text if it is usable; :class:`ExpressionError` saying why not."""
    if not isinstance(source, str):
        raise ExpressionError(f"message must be text, got {type(source).__name__}")
    if len(source) > MAX_LENGTH:
        raise ExpressionError(f"message is longer than {MAX_LENGTH} characters")
    try:
        names = meta.find_undeclared_variables(_ENV.parse(source))
    except jinja2.TemplateSyntaxError as exc:
        raise ExpressionError(f"message template line {exc.lineno}: {exc.message}") from None
    unknown = sorted(names - set(FIELDS))
    if unknown:
        raise ExpressionError(f"message template uses {', '.join(unknown)}: a message may use only the "
                              f"alert's fields ({', '.join(FIELDS)})")
    render(source, {**SAMPLE, "labels": _AnyLabels(SAMPLE["labels"])})
    return source


class _AnyLabels(dict[str, Any]):
    """Sample labels for the load-time check: any label a template names renders as a placeholder."""

    def __missing__(self, key: str) -> str:
        return f"<{key}>"


def render(source: str, fields: dict[str, Any]) -> str:
    """Render in the sandbox with only ``fields``; any failure is an :class:`ExpressionError`."""
    try:
        return _ENV.from_string(source).render({k: fields.get(k) for k in FIELDS})
    except jinja2.TemplateError as exc:  # SecurityError, UndefinedError, TemplateSyntaxError
        raise ExpressionError(f"message template: {exc}") from None
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
        raise ExpressionError(f"message template: {type(exc).__name__}: {exc}") from None
