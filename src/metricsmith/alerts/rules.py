"""The rule file ``alerts.yml``: channels and rules, checked on load.

Every problem is reported with its line (``alerts.yml:12: unknown column 'revenue'``); all
problems of a file are collected into one :class:`AlertRuleError` and a file with any problem
yields no rules at all, so nothing is evaluated from a half-valid file. Secrets never live in
the file: channels name environment variables (``secret_env``, ``password_env``).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metricsmith import grains
from metricsmith.alerts import channels_spec, columns, templates
from metricsmith.alerts.channels_spec import ChannelSpec
from metricsmith.alerts.errors import AlertError, AlertRuleError, ExpressionError
from metricsmith.alerts.expr import Expr, parse_duration, parse_expr, parse_periods
from metricsmith.alerts.yamlload import Node, Seq, load
from metricsmith.config import project_root
from metricsmith.orchestration.schedules import SCHEDULES

ENV_RULES_FILE = "METRICSMITH_ALERTS_FILE"
KINDS = ("job_failed", "job_overdue", "data_stale", "metric_threshold", "realtime_threshold")
SEVERITIES = ("info", "warning", "critical")
_RULE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,79}")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]{0,62}")
_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,79}")
_JOB = re.compile(r"[a-z0-9][a-z0-9_-]{0,79}")
COMMON_KEYS = {"name", "kind", "severity", "labels", "message", "channels", "description", "resolve_after"}
KIND_KEYS: dict[str, set[str]] = {
    "job_failed": {"job"},
    "job_overdue": {"job", "within"},
    "data_stale": {"grain", "grace"},
    "metric_threshold": {"expr", "grain", "basis", "for", "custom_metric", "dimensions"},
    "realtime_threshold": {"expr", "for"},
}


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    severity: str
    line: int
    labels: dict[str, str] = field(default_factory=dict)
    message: str = templates.DEFAULT_MESSAGE
    channels: tuple[str, ...] = ()
    description: str = ""
    #: the condition must stay false this long before the incident resolves (flap damping)
    resolve_after: int = 0
    #: time-based rules: the condition must hold this long before firing
    for_seconds: int = 0
    #: metric_threshold: the newest N periods must all cross
    for_periods: int = 1
    job: str | None = None
    within: int = 7200
    grain: str | None = None
    grace: int = 7200
    expr: Expr | None = None
    basis: str = "full"
    custom_metric: str | None = None
    dimensions: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RuleSet:
    source: str
    rules: tuple[Rule, ...]
    channels: dict[str, ChannelSpec]

    def rule(self, name: str) -> Rule:
        for r in self.rules:
            if r.name == name:
                return r
        raise AlertError(f"no rule {name!r} in {self.source}: rules are {', '.join(r.name for r in self.rules) or 'none'}")


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[tuple[int | None, str]] = []

    def add(self, line: int | None, message: str) -> None:
        self.items.append((line, message))

    def check(self, line: int | None, fn: Callable[[], Any]) -> Any:
        """``fn()``; an ExpressionError/AlertRuleError becomes a problem at ``line`` (returns None)."""
        try:
            return fn()
        except AlertRuleError as exc:
            self.add(exc.line or line, exc.detail)
        except ExpressionError as exc:
            self.add(line, str(exc))
        return None

    def raise_if_any(self) -> None:
        if not self.items:
            return
        self.items.sort(key=lambda item: item[0] or 0)
        first_line, first = self.items[0]
        exc = AlertRuleError(first if len(self.items) == 1 else f"{first} (and {len(self.items) - 1} more problem(s))",
                             line=first_line, source=self.source)
        exc.problems = [f"{self.source}:{ln}: {msg}" if ln else f"{self.source}: {msg}" for ln, msg in self.items]
        raise exc


def default_path() -> Path:
    """``$METRICSMITH_ALERTS_FILE``, else ``alerts.yml`` in the project root."""
    configured = os.environ.get(ENV_RULES_FILE, "").strip()
    return Path(configured) if configured else project_root() / "alerts.yml"


def load_file(path: Path | str | None = None) -> RuleSet:
    path = Path(path) if path is not None else default_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AlertRuleError(f"cannot read the rule file ({exc.strerror or exc})", source=str(path)) from None
    return parse_text(text, str(path))


def parse_text(text: str, source: str = "alerts.yml") -> RuleSet:
    """Parse and check a whole rule file (the one entry point of the loader)."""
    doc = load(text, source)
    problems = _Problems(source)
    if not isinstance(doc, Node):
        problems.add(getattr(doc, "line", 1), "the file must be a mapping with 'rules:' (and 'channels:')")
        problems.raise_if_any()
    for key in sorted(set(doc) - {"channels", "rules", "defaults"}):
        problems.add(doc.line_of(key), f"unknown top-level key {key!r}: use channels, rules, defaults")
    chans = _channels(doc.get("channels"), doc.line_of("channels"), problems)
    defaults = _defaults(doc.get("defaults"), doc.line_of("defaults"), problems)
    rules = _rules(doc.get("rules"), doc.line_of("rules"), chans, defaults, problems)
    problems.raise_if_any()
    return RuleSet(source, tuple(rules), chans)


def _section(raw: Any, line: int, problems: _Problems, must: str) -> Node | None:
    """An optional top-level mapping: None when absent, or when it is no mapping (``must`` is
    then the problem at ``line``)."""
    if raw is not None and not isinstance(raw, Node):
        problems.add(line, must)
    return raw if isinstance(raw, Node) else None


def _channels(raw: Any, line: int, problems: _Problems) -> dict[str, ChannelSpec]:
    node = _section(raw, line, problems, "channels: must map channel names to their settings")
    if node is None:
        return {}
    out: dict[str, ChannelSpec] = {}
    for name, spec in node.items():
        where = node.line_of(name)
        chan = problems.check(where, functools.partial(channels_spec.parse, name, spec, where))
        if chan is not None:
            out[name] = chan
    return out


def _defaults(raw: Any, line: int, problems: _Problems) -> dict[str, Any]:
    node = _section(raw, line, problems, "defaults: must be a mapping (severity, labels, channels, resolve_after)")
    if node is None:
        return {}
    for key in sorted(set(node) - {"severity", "labels", "channels", "resolve_after", "message"}):
        problems.add(node.line_of(key), f"unknown key {key!r} in defaults: use severity, labels, channels, "
                                        "resolve_after, message")
    return dict(node)


def _rules(raw: Any, line: int, chans: dict[str, ChannelSpec], defaults: dict[str, Any],
           problems: _Problems) -> list[Rule]:
    if raw is None:
        problems.add(line, "no 'rules:' list")
        return []
    if not isinstance(raw, Seq):
        problems.add(line, "rules: must be a list of rules")
        return []
    out: list[Rule] = []
    seen: dict[str, int] = {}
    for item, item_line in zip(raw, raw.lines, strict=True):
        if not isinstance(item, Node):
            problems.add(item_line, "each rule must be a mapping with name and kind")
            continue
        rule = _rule(item, chans, defaults, problems)
        if rule is None:
            continue
        if rule.name in seen:
            problems.add(rule.line, f"duplicate rule name {rule.name!r} (first at line {seen[rule.name]})")
        seen.setdefault(rule.name, rule.line)
        out.append(rule)
    return out


def _text(value: Any, what: str, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ExpressionError(f"{what} {value!r} must match {pattern.pattern}")
    return value


def _labels(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ExpressionError("labels must map names to text")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not _LABEL.fullmatch(k) or isinstance(v, dict | list) or v is None:
            raise ExpressionError(f"label {k!r}: names are identifiers and values plain text or numbers")
        out[k] = str(v)
    return out


def _channel_list(value: Any, chans: dict[str, ChannelSpec]) -> tuple[str, ...]:
    if value is None:
        return ()
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ExpressionError("channels must be a list of channel names")
    for n in names:
        if n not in chans:
            raise ExpressionError(f"unknown channel {n!r}: declared channels are {', '.join(chans) or 'none'}")
    return tuple(dict.fromkeys(names))


def _rule(item: Node, chans: dict[str, ChannelSpec], defaults: dict[str, Any], problems: _Problems) -> Rule | None:
    start = len(problems.items)
    name = problems.check(item.line_of("name"), lambda: _text(item.get("name"), "rule name", _RULE_NAME))
    kind = item.get("kind")
    if kind not in KINDS:
        problems.add(item.line_of("kind"), f"rule {name or '?'}: unknown kind {kind!r}: use {', '.join(KINDS)}")
        return None
    for key in sorted(set(item) - COMMON_KEYS - KIND_KEYS[kind]):
        problems.add(item.line_of(key), f"rule {name}: unknown key {key!r} for kind {kind}: use "
                                        f"{', '.join(sorted(COMMON_KEYS | KIND_KEYS[kind]))}")

    def get(key: str) -> Any:
        return item.get(key, defaults.get(key))

    def at(key: str) -> int:
        return item.line_of(key)

    severity = get("severity") or "warning"
    if severity not in SEVERITIES:
        problems.add(at("severity"), f"rule {name}: severity {severity!r}: use {', '.join(SEVERITIES)}")
    fields: dict[str, Any] = {
        "labels": problems.check(at("labels"), lambda: {**_labels(defaults.get("labels")), **_labels(item.get("labels"))}),
        "message": problems.check(at("message"), lambda: templates.check(get("message") or templates.DEFAULT_MESSAGE)),
        "channels": problems.check(at("channels"), lambda: _channel_list(get("channels"), chans)),
        "resolve_after": problems.check(at("resolve_after"), lambda: parse_duration(get("resolve_after") or "0s")),
        "description": str(item.get("description") or ""),
    }
    fields.update(_KIND_PARSERS[kind](item, problems) or {})
    if len(problems.items) > start or name is None:
        return None
    return Rule(name=name, kind=kind, severity=severity, line=item.line, **fields)


def _job(item: Node, problems: _Problems, required: bool) -> str | None:
    job = item.get("job")
    if job is None:
        if required:
            problems.add(item.line, f"rule {item.get('name')}: job is required for kind {item.get('kind')}")
        return None
    return problems.check(item.line_of("job"), lambda: _text(job, "job", _JOB))


def _job_failed(item: Node, problems: _Problems) -> dict[str, Any]:
    return {"job": _job(item, problems, required=False)}


def _job_overdue(item: Node, problems: _Problems) -> dict[str, Any]:
    job = _job(item, problems, required=True)
    if job is not None:
        problems.check(item.line_of("job"), lambda: _scheduled(job))
    return {"job": job, "within": problems.check(item.line_of("within"),
                                                 lambda: parse_duration(item.get("within", "2h")))}


def _scheduled(job: str) -> None:
    if job not in SCHEDULES:
        raise ExpressionError(f"job {job!r} has no schedule: job_overdue needs a scheduled job")


def _grain(value: Any) -> str:
    try:
        return grains.get(str(value)).name
    except grains.GrainError as exc:
        raise ExpressionError(str(exc)) from None


def _data_stale(item: Node, problems: _Problems) -> dict[str, Any]:
    grain = None if item.get("grain") is None else problems.check(item.line_of("grain"), lambda: _grain(item["grain"]))
    return {"grain": grain, "grace": problems.check(item.line_of("grace"), lambda: parse_duration(item.get("grace", "2h")))}


def _dimensions(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(_LABEL.fullmatch(k) for k in value) \
            or any(isinstance(v, dict | list) for v in value.values()):
        raise ExpressionError("dimensions must map dimension names to plain values")
    return dict(value)


def _metric_threshold(item: Node, problems: _Problems) -> dict[str, Any]:
    expr = problems.check(item.line_of("expr"), lambda: parse_expr(item.get("expr")))
    custom = item.get("custom_metric")
    if custom is not None:
        problems.check(item.line_of("custom_metric"), lambda: _text(custom, "custom_metric", _SLUG))
    elif "dimensions" in item:
        problems.add(item.line_of("dimensions"), "dimensions filter the rows of a custom metric: set custom_metric")
    if item.get("grain") is None:
        problems.add(item.line, f"rule {item.get('name')}: grain is required for metric_threshold "
                                f"({', '.join(grains.names())})")
    grain = None if item.get("grain") is None else problems.check(item.line_of("grain"), lambda: _grain(item["grain"]))
    if expr is not None and expr.operand.function is not None:
        problems.add(item.line_of("expr"), f"{expr.operand.function}() reads a realtime series: use kind "
                                           "realtime_threshold")
    elif expr is not None and grain is not None:
        problems.check(item.line_of("expr"),
                       lambda: columns.check_column(grains.get(grain), expr.operand.name, custom is not None))
    return {"expr": expr, "grain": grain, "custom_metric": custom,
            "basis": problems.check(item.line_of("basis"), lambda: columns.check_basis(item.get("basis"))),
            "for_periods": problems.check(item.line_of("for"), lambda: parse_periods(item.get("for", 1))),
            "dimensions": problems.check(item.line_of("dimensions"), lambda: _dimensions(item.get("dimensions")))}


def _realtime_threshold(item: Node, problems: _Problems) -> dict[str, Any]:
    expr = problems.check(item.line_of("expr"), lambda: parse_expr(item.get("expr")))
    if expr is not None and expr.operand.function is None:
        problems.add(item.line_of("expr"), "realtime_threshold compares a series: rate(name, 60s), counter(name) "
                                           "or gauge(name)")
    return {"expr": expr, "for_seconds": problems.check(item.line_of("for"),
                                                        lambda: parse_duration(item.get("for", "0s")))}


_KIND_PARSERS: dict[str, Callable[[Node, _Problems], dict[str, Any]]] = {
    "job_failed": _job_failed, "job_overdue": _job_overdue, "data_stale": _data_stale,
    "metric_threshold": _metric_threshold, "realtime_threshold": _realtime_threshold,
}
