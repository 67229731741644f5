"""The metric spec: one shape through YAML, JSON, the CLI and Python (plus the metric_type / data_source / aggregation_method key names)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from metricsmith.custom_metrics import identifiers as ids
from metricsmith.custom_metrics.errors import MetricSpecError

METRIC_TYPES = ("COUNT", "SUM", "AVERAGE", "DISTINCT_COUNT", "PERCENTILE", "RATIO", "MAX", "MIN")
PART_TYPES = tuple(t for t in METRIC_TYPES if t != "RATIO")
GRAINS = ("day", "week", "month")
VISIBILITIES = ("PRIVATE", "TEAM", "ORGANIZATION", "PUBLIC")
#: the aggregation_method key names -> type
_AGGREGATION_METHODS = {"sum": "SUM", "count": "COUNT", "avg": "AVERAGE", "average": "AVERAGE", "mean": "AVERAGE",
                        "count_distinct": "DISTINCT_COUNT", "distinct_count": "DISTINCT_COUNT", "max": "MAX",
                        "min": "MIN", "percentile": "PERCENTILE", "ratio": "RATIO"}
_KNOWN_KEYS = {"name", "slug", "description", "type", "source", "grain", "expression", "filter", "dimensions",
               "percentile", "numerator", "denominator", "visibility", "team",
               "metric_type", "data_source", "calculation_formula", "aggregation_method"}


@dataclass(frozen=True)
class Part:
    """A RATIO numerator or denominator: an aggregate, or another metric by slug."""

    type: str | None = None
    expression: str | None = None
    filter: str | None = None
    percentile: float | None = None
    metric: str | None = None


@dataclass(frozen=True)
class MetricSpec:
    name: str
    type: str
    source: str
    grain: str = "day"
    expression: str | None = None
    filter: str | None = None
    dimensions: tuple[str, ...] = ()
    percentile: float | None = None
    numerator: Part | None = None
    denominator: Part | None = None
    visibility: str = "PRIVATE"
    team: str | None = None
    description: str = ""
    slug: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra")
        data["dimensions"] = list(self.dimensions)
        for key in ("numerator", "denominator"):
            if data[key] is not None:
                data[key] = {k: v for k, v in data[key].items() if v is not None}
        return {k: v for k, v in data.items() if v not in (None, "", [], {})} | {"name": self.name}


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if not slug or not slug[0].isalpha():
        slug = f"m_{slug}"
    return slug[:50].rstrip("_")


def load_text(text: str) -> dict[str, Any]:
    """Parse a YAML or JSON document (JSON is YAML) into a mapping."""
    try:
        data = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise MetricSpecError(f"spec is neither valid YAML nor JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MetricSpecError("spec must be a mapping (name, type, source, ...)")
    return data


def _str(data: dict[str, Any], key: str, default: str | None = None) -> str | None:
    value = data.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MetricSpecError(f"{key} must be a string, got {type(value).__name__}")
    return value


def _percentile(data: dict[str, Any], where: str) -> float | None:
    value = data.get("percentile")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise MetricSpecError(f"{where}percentile must be a number between 0.0 and 1.0, got {value!r}")
    return float(value)


def _part(data: Any, where: str) -> Part:
    if not isinstance(data, dict):
        raise MetricSpecError(f"{where} must be a mapping like {{type: SUM, expression: revenue_cents}} "
                              "or {metric: other_slug}")
    unknown = set(data) - {"type", "expression", "filter", "percentile", "metric"}
    if unknown:
        raise MetricSpecError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
    metric = _str(data, "metric")
    if metric is not None:
        if set(data) != {"metric"}:
            raise MetricSpecError(f"{where}: a metric reference takes only `metric`")
        return Part(metric=metric)
    kind = (_str(data, "type") or "").upper()
    if kind not in PART_TYPES:
        raise MetricSpecError(f"{where}.type must be one of {', '.join(PART_TYPES)}, got {data.get('type')!r}")
    return Part(type=kind, expression=_str(data, "expression"), filter=_str(data, "filter"),
                percentile=_percentile(data, f"{where}."))


def _kind(data: dict[str, Any]) -> str:
    """The metric type, from ``type`` / ``metric_type`` and ``aggregation_method``."""
    kind = _str(data, "type") or _str(data, "metric_type")
    method = _str(data, "aggregation_method")
    if method is not None:
        mapped = _AGGREGATION_METHODS.get(method.lower())
        if mapped is None:
            raise MetricSpecError(f"aggregation_method {method!r} is not one of {', '.join(_AGGREGATION_METHODS)}")
        if kind and kind.upper() != mapped:
            raise MetricSpecError(f"type {kind} contradicts aggregation_method {method}")
        kind = kind or mapped
    kind = (kind or "").upper()
    if kind not in METRIC_TYPES:
        raise MetricSpecError(f"type must be one of {', '.join(METRIC_TYPES)}, got {kind or None!r}")
    return kind


def _choice(data: dict[str, Any], key: str, default: str, allowed: tuple[str, ...], *, upper: bool) -> str:
    raw = _str(data, key, default) or default
    value = raw.upper() if upper else raw.lower()
    if value not in allowed:
        raise MetricSpecError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _dimensions(data: dict[str, Any]) -> tuple[str, ...]:
    dims = data.get("dimensions") or []
    if not isinstance(dims, list) or not all(isinstance(d, str) for d in dims):
        raise MetricSpecError("dimensions must be a list of column names")
    if len(set(dims)) != len(dims):
        raise MetricSpecError("dimensions must not repeat")
    return tuple(dims)


def _ratio_parts(data: dict[str, Any], kind: str, expression: str | None) -> tuple[Part | None, Part | None]:
    if kind != "RATIO":
        if "numerator" in data or "denominator" in data:
            raise MetricSpecError(f"numerator/denominator are only for RATIO, not {kind}")
        return None, None
    if "numerator" not in data or "denominator" not in data:
        raise MetricSpecError("RATIO needs numerator and denominator")
    parts = _part(data["numerator"], "numerator"), _part(data["denominator"], "denominator")
    if expression:
        raise MetricSpecError("RATIO takes numerator/denominator, not expression")
    return parts


def _metric_percentile(data: dict[str, Any], kind: str) -> float | None:
    percentile = _percentile(data, "")
    if kind == "PERCENTILE" and percentile is None:
        raise MetricSpecError("PERCENTILE needs percentile: 0.0-1.0")
    if kind != "PERCENTILE" and percentile is not None:
        raise MetricSpecError(f"percentile is only for PERCENTILE, not {kind}")
    return percentile


def _optional_ids(data: dict[str, Any]) -> tuple[str | None, str | None]:
    slug = _str(data, "slug")
    if slug is not None:
        ids.slug(slug)
    team = _str(data, "team")
    if team is not None:
        ids.principal_id(team, "team id")
    return slug, team


def parse_spec(source: str | dict[str, Any]) -> MetricSpec:
    """Build a :class:`MetricSpec` from YAML/JSON text or a mapping; structural checks only."""
    data = load_text(source) if isinstance(source, str) else dict(source)
    unknown = set(data) - _KNOWN_KEYS
    if unknown:
        raise MetricSpecError(f"unknown spec keys: {', '.join(sorted(unknown))}")
    name = _str(data, "name")
    if not name or not name.strip():
        raise MetricSpecError("name is required")
    kind = _kind(data)
    source_name = _str(data, "source") or _str(data, "data_source")
    if not source_name:
        raise MetricSpecError("source is required (a registered data source, e.g. events or daily_metrics)")
    grain = _choice(data, "grain", "day", GRAINS, upper=False)
    visibility = _choice(data, "visibility", "PRIVATE", VISIBILITIES, upper=True)
    dims = _dimensions(data)
    expression = _str(data, "expression") or _str(data, "calculation_formula")
    slug, team = _optional_ids(data)
    description = _str(data, "description", "") or ""
    ids.free_text(name, "name", ids.MAX_NAME_LENGTH, newlines=False)
    ids.free_text(description, "description", ids.MAX_DESCRIPTION_LENGTH, newlines=True)
    numerator, denominator = _ratio_parts(data, kind, expression)
    percentile = _metric_percentile(data, kind)
    if kind not in ("COUNT", "RATIO") and not expression:
        raise MetricSpecError(f"{kind} needs an expression")
    return MetricSpec(name=name.strip(), type=kind, source=source_name, grain=grain, expression=expression,
                      filter=_str(data, "filter"), dimensions=dims, percentile=percentile,
                      numerator=numerator, denominator=denominator, visibility=visibility,
                      team=team, description=description, slug=slug)
