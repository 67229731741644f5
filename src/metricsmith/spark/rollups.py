"""The rollup models on Spark: the same dbt project, target ``spark``, through :func:`core.dbt.invoke`.

The SparkSession is created first (:func:`metricsmith.spark.session.get_session`), so dbt-spark's
``method: session`` uses it. The changed days come from ``analytics.int_changed_days`` on Spark.
A backfill passes the PostgreSQL backfill's dbt vars (``backfill_start`` / ``backfill_end``): the
same change tracking adds the range's days, and each model overwrites the partitions its
recomputed rows (those days, the periods above them) fall in.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from metricsmith.config import Settings, load_settings
from metricsmith.core.dbt import DbtOutcome, invoke
from metricsmith.core.schema import marts_schema
from metricsmith.rollups import backfill_vars
from metricsmith.spark.config import SPARK_TARGET, spark_settings
from metricsmith.spark.raw import ensure_tables
from metricsmith.spark.session import application_id, get_session

#: the models a rollup run builds (as metricsmith.rollups selects them)
SELECTOR = "+int_rollup_ledger"


@dataclass
class SparkRollupResult:
    mode: str
    timezone: str
    seconds: float
    application_id: str
    master: str
    outcome: DbtOutcome
    changed_days: list[date] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)

    def render(self) -> str:
        span = f" ({self.changed_days[0]} .. {self.changed_days[-1]})" if self.changed_days else ""
        why = ", ".join(f"{n} {r}" for r, n in sorted(self.reasons.items()))
        return (f"rollups {self.mode} on Spark {self.master} (app {self.application_id}, {self.timezone}) in "
                f"{self.seconds:.1f} s: {len(self.changed_days)} day(s) recomputed{span}"
                + (f"; {why}" if why else "")
                + f"; {self.outcome.models_ok} model(s) ok")


@contextmanager
def own_target_path(settings: Settings) -> Iterator[None]:
    """dbt's manifest of the spark target in its own folder: switching targets in one target path
    makes dbt parse the whole project again on every switch."""
    saved = os.environ.get("DBT_TARGET_PATH")
    os.environ["DBT_TARGET_PATH"] = str(spark_settings(settings).home / "dbt-target")
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("DBT_TARGET_PATH", None)
        else:
            os.environ["DBT_TARGET_PATH"] = saved


def run_rollups(*, full_refresh: bool = False, backfill: tuple[date, date] | None = None,
                timezone: str | None = None, extra_vars: dict[str, Any] | None = None,
                settings: Settings | None = None, in_flow: bool = False) -> SparkRollupResult:
    """One rollup run on Spark (incremental unless ``full_refresh``); ``backfill=(start, end)``
    additionally recomputes those days and everything above them (as
    :func:`metricsmith.rollups.run_rollups`). Raises DbtError on failure."""
    settings = settings or load_settings()
    tz = timezone or settings.timezone
    vars_: dict[str, Any] = {"metrics_timezone": tz, **(extra_vars or {})}
    if backfill is not None:
        vars_.update(backfill_vars(*backfill))
    session = get_session(settings)
    ensure_tables(session)
    args = ["run", "--select", SELECTOR, "stg_events_rejected", "--target", SPARK_TARGET, "--quiet"]
    if full_refresh:
        args.append("--full-refresh")
    started = time.perf_counter()
    with own_target_path(settings):
        outcome = invoke(args, vars=vars_, settings=settings, in_flow=in_flow).raise_for_status()
    seconds = time.perf_counter() - started
    schema = marts_schema(SPARK_TARGET)
    days = [r[0] for r in session.sql(f"select metric_date from {schema}.int_changed_days order by 1").collect()]
    reasons = {r[0]: int(r[1]) for r in session.sql(
        f"select reason, count(*) from {schema}.int_changed_days group by reason").collect()}
    full = bool(session.sql(f"select is_full_rebuild from {schema}.int_rollup_batch").collect()[0][0])
    if full_refresh:
        mode = "full-refresh"
    elif backfill is not None:
        mode = "backfill"
    else:
        mode = "full rebuild" if full else "incremental"
    return SparkRollupResult(mode=mode, timezone=tz, seconds=seconds, application_id=application_id(session),
                             master=str(session.sparkContext.master), outcome=outcome, changed_days=days,
                             reasons=reasons)
