"""The errors of the alerts package (all user-facing: the CLI prints one line, exit status 2)."""

from __future__ import annotations

from metricsmith.errors import UserFacingError


class AlertRuleError(UserFacingError):
    """A rule file that cannot be used: the message names the file and the line."""

    def __init__(self, message: str, *, line: int | None = None, source: str | None = None) -> None:
        where = source or "alerts.yml"
        prefix = f"{where}:{line}: " if line is not None else f"{where}: "
        super().__init__(prefix + message)
        self.line = line
        self.source = source
        self.detail = message
        #: every problem of the file, one line each (the loader fills it; one by default)
        self.problems: list[str] = [str(self)]


class ExpressionError(ValueError):
    """An expression or duration that does not parse (wrapped into :class:`AlertRuleError`)."""


class AlertError(UserFacingError):
    """An alerts command that cannot do what was asked (unknown rule, bad silence...)."""
