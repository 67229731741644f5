"""The markdown artifact each job run publishes in the Prefect UI: rows changed, periods
touched and the latest growth figures."""

from __future__ import annotations

from typing import Any

from metricsmith.orchestration.jobs import JobResult


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):+.1f} %"


def render_markdown(result: JobResult) -> str:
    c = result.changed
    lines = [
        f"### {result.job_name}: {result.status}",
        "",
        "| | |",
        "|---|---|",
        f"| attempts | {result.attempts} |",
        f"| duration | {result.seconds:.1f} s |",
        f"| mart rows written | {result.rows_affected:,} |",
        f"| models ok / failed | {result.models_ok} / {result.models_failed} |",
        f"| days touched | {len(c.days)}" + (f" ({c.days[0]} .. {c.days[-1]})" if c.days else "") + " |",
        f"| weeks touched | {len(c.weeks)} |",
        f"| months touched | {len(c.months)} |",
        f"| job log id | {result.log_id} |",
    ]
    if result.error_message:
        lines += ["", "**Error**", "", "```", result.error_message[:4000], "```"]
    if result.latest_weeks:
        lines += ["", "**Latest weeks**", "", "| week | events | active users | revenue | events WoW | users WoW | revenue WoW |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for w in result.latest_weeks:
            lines.append(f"| {w['week_start']} | {w['total_events']:,} | {w['active_users']:,} | "
                         f"{w['revenue_cents'] / 100:,.2f} | {_pct(w['total_events_wow_pct'])} | "
                         f"{_pct(w['active_users_wow_pct'])} | {_pct(w['revenue_cents_wow_pct'])} |")
    if result.latest_months:
        lines += ["", "**Latest months**", "", "| month | events | active users | revenue | events MoM | users MoM | revenue YoY |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for m in result.latest_months:
            lines.append(f"| {m['month_start']} | {m['total_events']:,} | {m['active_users']:,} | "
                         f"{m['revenue_cents'] / 100:,.2f} | {_pct(m['total_events_mom_pct'])} | "
                         f"{_pct(m['active_users_mom_pct'])} | {_pct(m['revenue_cents_yoy_pct'])} |")
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
