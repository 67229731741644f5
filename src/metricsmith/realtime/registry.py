"""Metric types and the registry that declares every realtime metric.

Names and labels follow the Prometheus conventions: a metric name matches
``[a-zA-Z_:][a-zA-Z0-9_:]*``, a label name ``[a-zA-Z_][a-zA-Z0-9_]*`` and must not start with
``__``. A metric is declared once (type, help, label names, histogram buckets, rate windows);
declarations are stored in Redis so that every process (consumer, exporter, API) sees the
same set. Using an undeclared metric, the wrong type, or the wrong labels raises
:class:`RealtimeMetricError` with a message that says what to do.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from metricsmith.errors import UserFacingError

NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
#: separates label values inside a Redis hash field (not allowed inside a label value)
LABEL_SEP = "\x1f"
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DEFAULT_WINDOWS = (60, 300, 3600)
#: a rate window is kept as this many buckets; the oldest one is interpolated
RATE_RESOLUTION = 600


class RealtimeMetricError(UserFacingError):
    """Undeclared metric, wrong type, bad labels or values, conflicting declaration."""


class MetricType(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"
    RATE = "rate"


def _ascending_finite(buckets: tuple[float, ...]) -> bool:
    return all(math.isfinite(b) for b in buckets) and list(buckets) == sorted(set(buckets))


def _whole_seconds(windows: tuple[int, ...]) -> bool:
    return all(int(w) == w and w >= 1 for w in windows)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    type: MetricType
    help: str = ""
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()  # histogram upper bounds, ascending, +Inf implied
    windows: tuple[int, ...] = ()  # rate windows in seconds
    builtin: bool = False  # maintained by the stream consumer from events

    def __post_init__(self) -> None:
        self._check_names()
        self._check_histogram()
        self._check_rate()

    def _check_names(self) -> None:
        if not NAME_RE.match(self.name):
            raise RealtimeMetricError(
                f"metric name {self.name!r} is not a Prometheus name ([a-zA-Z_:][a-zA-Z0-9_:]*)")
        for label in self.labels:
            if not LABEL_RE.match(label) or label.startswith("__"):
                raise RealtimeMetricError(
                    f"label name {label!r} of {self.name} is not a Prometheus label name "
                    "([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)")
        if len(set(self.labels)) != len(self.labels):
            raise RealtimeMetricError(f"{self.name}: duplicate label names {self.labels}")
        reserved = {"le"} if self.type is MetricType.HISTOGRAM else {"window"} if self.type is MetricType.RATE else set()
        if reserved & set(self.labels):
            raise RealtimeMetricError(f"{self.name}: label {sorted(reserved)[0]!r} is reserved for a {self.type}")

    def _check_histogram(self) -> None:
        self._check_option(MetricType.HISTOGRAM, "buckets", DEFAULT_BUCKETS, _ascending_finite,
                           "buckets must be finite, distinct and ascending")

    def _check_rate(self) -> None:
        self._check_option(MetricType.RATE, "windows", DEFAULT_WINDOWS, _whole_seconds,
                           "rate windows are whole seconds >= 1")

    def _check_option(self, owner: MetricType, attr: str, default: tuple[Any, ...],
                      valid: Callable[[tuple[Any, ...]], bool], rule: str) -> None:
        """An option of one type only (a histogram's buckets, a rate's windows): the default when
        none is given, else checked with ``valid``."""
        if self.type is not owner:
            if getattr(self, attr):
                raise RealtimeMetricError(f"{self.name}: only a {owner} has {attr}")
            return
        if not getattr(self, attr):
            object.__setattr__(self, attr, default)
        if not valid(getattr(self, attr)):
            raise RealtimeMetricError(f"{self.name}: {rule}")

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "type": str(self.type), "help": self.help, "labels": list(self.labels),
                           "buckets": list(self.buckets), "windows": list(self.windows), "builtin": self.builtin},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> MetricSpec:
        data = json.loads(text)
        return cls(data["name"], MetricType(data["type"]), data.get("help", ""), tuple(data.get("labels", ())),
                   tuple(float(b) for b in data.get("buckets", ())), tuple(int(w) for w in data.get("windows", ())),
                   bool(data.get("builtin", False)))

    def label_key(self, labels: Mapping[str, Any] | None) -> str:
        """The labels as one Redis hash field / key part (values in declared order)."""
        given = dict(labels or {})
        if set(given) != set(self.labels):
            missing = sorted(set(self.labels) - set(given))
            extra = sorted(set(given) - set(self.labels))
            parts = []
            if missing:
                parts.append(f"missing {missing}")
            if extra:
                parts.append(f"undeclared {extra}")
            raise RealtimeMetricError(
                f"{self.name} takes labels {list(self.labels)}: {'; '.join(parts)}")
        values = []
        for name in self.labels:
            value = given[name]
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise RealtimeMetricError(f"{self.name}: label {name} must be text, got {type(value).__name__}")
            text = str(value)
            if LABEL_SEP in text:
                raise RealtimeMetricError(f"{self.name}: label {name} contains the reserved character \\x1f")
            values.append(text)
        return LABEL_SEP.join(values)

    def labels_of(self, key: str) -> dict[str, str]:
        if not self.labels:
            return {}
        return dict(zip(self.labels, key.split(LABEL_SEP), strict=True))


@dataclass
class Registry:
    """In-process view of the declared metrics."""

    specs: dict[str, MetricSpec] = field(default_factory=dict)

    def add(self, spec: MetricSpec) -> MetricSpec:
        existing = self.specs.get(spec.name)
        if existing is not None and existing != spec:
            raise RealtimeMetricError(
                f"{spec.name} is already declared as {describe(existing)}; cannot redeclare it as {describe(spec)}")
        self.specs[spec.name] = spec
        return spec

    def get(self, name: str) -> MetricSpec | None:
        return self.specs.get(name)

    def __iter__(self) -> Any:
        return iter(sorted(self.specs.values(), key=lambda s: s.name))


def describe(spec: MetricSpec) -> str:
    text = f"a {spec.type}"
    if spec.labels:
        text += f" with labels {list(spec.labels)}"
    if spec.buckets:
        text += f" with buckets {list(spec.buckets)}"
    if spec.windows:
        text += f" with windows {list(spec.windows)}"
    return text


def check_type(spec: MetricSpec | None, name: str, expected: MetricType, operation: str) -> MetricSpec:
    if spec is None:
        raise RealtimeMetricError(
            f"metric {name!r} is not declared; declare it first, e.g. "
            f"service.declare_{expected}({name!r}, help='...') (or `metricsmith realtime export` to list metrics)")
    if spec.type is not expected:
        raise RealtimeMetricError(f"{operation}() needs a {expected}, but {name!r} is declared as {spec.type}")
    return spec


def as_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RealtimeMetricError(f"{name}: value must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise RealtimeMetricError(f"{name}: value must be finite, got {value!r}")
    return number


def tidy(value: float) -> int | float:
    """Whole floats as ints (counters of whole events read back as 3, not 3.0)."""
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else value


# --------------------------------------------------------------------------- built-ins

#: purchase value histogram buckets, in cents
PURCHASE_BUCKETS_CENTS: tuple[float, ...] = (100, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000)
EVENTS_TOTAL = MetricSpec("metricsmith_events_total", MetricType.COUNTER,
                          "Events consumed from the stream, by reporting-time-zone day of occurred_at and type",
                          ("day", "event_type"), builtin=True)
REVENUE_TOTAL = MetricSpec("metricsmith_revenue_cents_total", MetricType.COUNTER,
                           "Revenue in cents of consumed events, by reporting-time-zone day", ("day",), builtin=True)
ACTIVE_USERS = MetricSpec("metricsmith_active_users", MetricType.GAUGE,
                          "Distinct user_id with an event that day (exact: a Redis set per day)", ("day",), builtin=True)
PURCHASE_VALUE = MetricSpec("metricsmith_purchase_value_cents", MetricType.HISTOGRAM,
                            "Revenue of purchase events in cents, by reporting-time-zone day", ("day",),
                            buckets=PURCHASE_BUCKETS_CENTS, builtin=True)
EVENTS_RATE = MetricSpec("metricsmith_events_per_second", MetricType.RATE,
                         "Events consumed per second over a sliding window", (), windows=DEFAULT_WINDOWS, builtin=True)
DRIFT = MetricSpec("metricsmith_realtime_drift", MetricType.GAUGE,
                   "expected (raw.events) minus observed (Redis) at the last reconciliation", ("metric", "day"),
                   builtin=True)
CORRECTIONS = MetricSpec("metricsmith_realtime_corrections_total", MetricType.COUNTER,
                         "Corrections reconciliation applied to Redis", ("metric",), builtin=True)
BUILTINS: tuple[MetricSpec, ...] = (EVENTS_TOTAL, REVENUE_TOTAL, ACTIVE_USERS, PURCHASE_VALUE, EVENTS_RATE,
                                    DRIFT, CORRECTIONS)
#: metrics derived from events, keyed by day: reconciliation and restore recompute these
EVENT_DERIVED: tuple[MetricSpec, ...] = (EVENTS_TOTAL, REVENUE_TOTAL, ACTIVE_USERS, PURCHASE_VALUE)


def bucket_index(buckets: Sequence[float], value: float) -> int:
    """Index of the first bucket with ``value <= upper bound``; len(buckets) for +Inf."""
    for index, bound in enumerate(buckets):
        if value <= bound:
            return index
    return len(buckets)


def specs_from(items: Iterable[MetricSpec]) -> Registry:
    registry = Registry()
    for spec in items:
        registry.add(spec)
    return registry
