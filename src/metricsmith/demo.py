"""`metricsmith demo`: the whole pipeline on the configured (by default embedded) servers.

Steps are idempotent: a second run reuses the generated data and only runs what changed.
Later capabilities add their own step to ``STEPS``.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from datetime import date, timedelta

from metricsmith import db, grains, migrate
from metricsmith.config import load_settings

DEMO_DAYS = 365
DEMO_EVENTS_PER_DAY = 4_000
DEMO_SEED = 7


def step_servers() -> None:
    settings = load_settings()
    migrate.upgrade(settings)
    print(f"postgres  {db.database_url(settings)}  ({'embedded' if settings.embedded_postgres else 'external'})")
    print(f"redis     {db.redis_url(settings)}  ({'embedded' if settings.embedded_redis else 'external'})")


def step_generate() -> None:
    from metricsmith import generator

    with db.connect() as conn:
        row = conn.execute("select count(*), min(occurred_at)::date, max(occurred_at)::date from raw.events").fetchone()
    assert row is not None
    if row[0]:
        print(f"raw.events already holds {row[0]:,} events ({row[1]} .. {row[2]}): reusing them")
        return
    start = date.today() - timedelta(days=DEMO_DAYS)
    result = generator.generate_to_db(days=DEMO_DAYS, events_per_day=DEMO_EVENTS_PER_DAY, seed=DEMO_SEED,
                                      start=start, progress=True)
    print(result.render())


def step_rollups() -> None:
    """Run the rollups incrementally (the first time builds everything; a second demo only
    reads what arrived since) and print the latest periods of every grain with their growth."""
    from metricsmith.cli import rollups as cli

    print(cli.render_result(cli.run(quiet=True)))
    cli.show()


def imported_when_run(module: str, function: str) -> Callable[[], None]:
    """The step ``module.function``, imported when it runs: `metricsmith --help` and the first
    steps do not pay for importing Prefect, dbt and the rest (each capability owns its step)."""
    def step() -> None:
        getattr(importlib.import_module(module), function)()

    step.__qualname__ = step.__name__ = f"{module}.{function}"
    return step


STEPS: list[tuple[str, Callable[[], None]]] = [
    ("servers and migrations", step_servers),
    ("sample events", step_generate),
    ("rollups: " + " / ".join(g.adjective for g in grains.load()) + " metrics", step_rollups),
    ("alerts: a threshold rule fires and resolves", imported_when_run("metricsmith.alerts.demo", "demo_step")),
    ("orchestration: job log and health", imported_when_run("metricsmith.orchestration.demo", "step_jobs")),
    ("metric cache", imported_when_run("metricsmith.cache.demo", "step_cache")),
    ("custom metrics: stored definitions -> generated dbt models",
     imported_when_run("metricsmith.custom_metrics.demo", "step_custom_metrics")),
    ("realtime metrics: stream -> Redis + raw.events", imported_when_run("metricsmith.realtime.demo", "step_realtime")),
    ("HTTP API and dashboard", imported_when_run("metricsmith.api.demo", "step_api")),
]


def run_demo() -> int:
    for number, (title, step) in enumerate(STEPS, start=1):
        print(f"\n== {number}. {title}")
        step()
    print("\nDone. The dashboard on the demo data: METRICSMITH_API_PUBLIC_READ=1 .venv/bin/metricsmith api"
          "  ->  http://127.0.0.1:8750/")
    print("Next: `make test`, or see README.md for the analyst / operator / dashboard / Python views.")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on the configured servers and print a summary")
    p.add_argument("-v", "--verbose", action="store_true", help="show dbt's log (default: each step's summary)")
    p.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from metricsmith.core.dbt import set_verbose

    set_verbose(args.verbose)
    return run_demo()
