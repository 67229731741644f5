"""The markdown artifact each job run publishes in the Prefect UI: rows changed, periods
touched and, per grain (:mod:`metricsmith.grains`), the newest periods with their growth."""

from __future__ import annotations

from typing import Any

from metricsmith import grains
from metricsmith.orchestration.runner import GROWTH_MEASURES, JobResult
from metricsmith.query import BASIS_LEGEND, basis_mark

_LABELS = {"total_events": "events", "active_users": "active users", "revenue_cents": "revenue"}


def _pct(v: Any, basis: str | None = None) -> str:
    """A growth figure with its basis marker (none on ``full``): ``+4.2 %ᵗᵈ``."""
    return "n/a" if v is None else f"{float(v):+.1f} %{basis_mark(basis)}"


def _marked(rows: list[dict[str, Any]], grain: grains.Grain) -> bool:
    """Whether a figure of ``rows`` shows a marker (a growth value on a basis other than full)."""
    return any(r.get(f"{m}_{c.suffix}_pct") is not None and basis_mark(r.get(f"{c.suffix}_basis"))
               for c in grain.comparisons for m in GROWTH_MEASURES for r in rows)


def _summary(result: JobResult) -> list[str]:
    days = result.changed_days
    lines = [
        f"### {result.job_name}: {result.status}",
        "",
        "| | |",
        "|---|---|",
        f"| attempts | {result.attempts} |",
        f"| duration | {result.seconds:.1f} s |",
        f"| rows written | {result.rows_affected:,} |",
        f"| models ok / failed | {result.models_ok} / {result.models_failed} |",
        f"| days touched | {len(days)}" + (f" ({days[0]} .. {days[-1]})" if days else "") + " |",
    ]
    lines += [f"| {name}s touched | {len(periods)} |" for name, periods in result.changed.items()]
    lines.append(f"| job log id | {result.log_id} |")
    return lines


def _grain_table(grain: grains.Grain, rows: list[dict[str, Any]]) -> list[str]:
    growth = [(m, c.suffix) for c in grain.comparisons for m in GROWTH_MEASURES]
    head = ["", f"**Latest {grain.name}s**", "",
            "| " + " | ".join([grain.name, *(_LABELS[m] for m in GROWTH_MEASURES),
                               *(f"{_LABELS[m]} {s.upper()}" for m, s in growth)]) + " |",
            "|---|" + "---:|" * (len(GROWTH_MEASURES) + len(growth))]
    body = []
    for row in rows:
        cells = [str(row[grain.start_column]), f"{row['total_events']:,}", f"{row['active_users']:,}",
                 f"{row['revenue_cents'] / 100:,.2f}",
                 *(_pct(row.get(f"{m}_{s}_pct"), row.get(f"{s}_basis")) for m, s in growth)]
        body.append("| " + " | ".join(cells) + " |")
    legend = ["", f"_{BASIS_LEGEND}_"] if _marked(rows, grain) else []
    return head + body + legend


def render_markdown(result: JobResult) -> str:
    lines = _summary(result)
    if result.error_message:
        lines += ["", "**Error**", "", "```", result.error_message[:4000], "```"]
    for name, rows in result.latest.items():
        if rows:
            lines += _grain_table(grains.get(name), rows)
    return "\n".join(lines)


def publish(result: JobResult) -> str | None:
    """Create the artifact (key ``<job>-run``) in the current flow run; returns its markdown."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return None
    markdown = render_markdown(result)
    create_markdown_artifact(markdown=markdown, key=f"{result.job_name}-run",
                             description=f"{result.job_name} {result.status}")
    return markdown
