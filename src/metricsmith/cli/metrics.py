"""CLI: ``metricsmith metrics create|list|show|update|archive|validate|estimate|compile|run|values|backfill|user``.

Every read and write acts as a user (``--as USER`` or env ``METRICSMITH_USER``) so that the
metric's visibility is enforced; ``compile`` and ``run`` are operator actions over all
active metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from metricsmith.cli.args import day
from metricsmith.core.dbt import DbtError
from metricsmith.errors import UserFacingError

ENV_USER = "METRICSMITH_USER"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("metrics", help="custom metrics: define, validate, cost, compile to dbt models, run, read")
    msub = p.add_subparsers(dest="metrics_command", metavar="ACTION")
    msub.required = True

    def add(name: str, help_: str, handler: Any, *, user: bool = True) -> argparse.ArgumentParser:
        q = msub.add_parser(name, help=help_)
        if user:
            q.add_argument("--as", dest="as_user", default=os.environ.get(ENV_USER),
                           help=f"act as this user (default: env {ENV_USER})")
        q.add_argument("--json", action="store_true", help="machine-readable output")
        q.set_defaults(handler=handler)
        return q

    for name, help_, handler in (("create", "store a new metric from a YAML/JSON spec", cmd_create),
                                 ("validate", "check a spec (parse, columns, allow-list); nothing is stored", cmd_validate),
                                 ("estimate", "EXPLAIN the compiled query: estimated cost and rows vs the budget",
                                  cmd_estimate)):
        q = add(name, help_, handler)
        q.add_argument("-f", "--file", required=True, help="spec file (YAML or JSON), - for stdin")
    q = add("update", "store a new version of a metric from a spec", cmd_update)
    q.add_argument("slug")
    q.add_argument("-f", "--file", required=True, help="spec file (YAML or JSON), - for stdin")
    q = add("list", "metrics visible to the user", cmd_list)
    q.add_argument("--all", action="store_true", help="include archived metrics")
    q = add("show", "a metric's definition and versions", cmd_show)
    q.add_argument("slug")
    q.add_argument("--version", type=int)
    q = add("archive", "archive a metric (its generated model is removed at the next compile)", cmd_archive)
    q.add_argument("slug")
    add("compile", "write the generated models (.metricsmith/generated/<database>/) from the active metrics", cmd_compile, user=False)
    q = add("run", "compile, then dbt run the generated models and analytics.custom_metric_values", cmd_run,
            user=False)
    q.add_argument("--full-refresh", action="store_true")
    q = add("values", "a metric's values (previous period and growth)", cmd_values)
    q.add_argument("slug")
    q.add_argument("--version", type=int, help="default: the current version")
    q.add_argument("--start", type=day)
    q.add_argument("--end", type=day)
    q = add("backfill", "recompute a date range of one metric (all its versions)", cmd_backfill)
    q.add_argument("slug")
    q.add_argument("--start", type=day, required=True)
    q.add_argument("--end", type=day, required=True)
    q = add("user", "add or update a user (organization, admin flag, teams)", cmd_user, user=False)
    q.add_argument("user_id")
    q.add_argument("--org", required=True, help="organization id")
    q.add_argument("--admin", action="store_true", help="organization admin (may change any metric of the org)")
    q.add_argument("--team", action="append", default=[], help="team id (repeatable)")


def _service() -> Any:
    from metricsmith.custom_metrics import CustomMetricsService

    return CustomMetricsService()


def _user(args: argparse.Namespace) -> str:
    if not args.as_user:
        raise UserFacingError(f"say who acts: --as USER (or set {ENV_USER})")
    return str(args.as_user)


def _spec(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise UserFacingError(f"cannot read spec {path}: {exc.strerror}") from None


def _out(args: argparse.Namespace, data: Any, text: str) -> int:
    print(json.dumps(data, default=str, indent=2) if args.json else text)
    return 0


def _def_line(d: Any) -> str:
    failed = " (last run FAILED)" if d.run_status == "error" else ""
    return (f"{d.slug:<32} v{d.current_version:<3} {d.spec.get('type', ''):<15} {d.spec.get('grain', 'day'):<6} "
            f"{d.visibility:<13} owner={d.owner_id} {d.status}{failed}")


def cmd_create(args: argparse.Namespace) -> int:
    d = _service().create(_user(args), _spec(args.file))
    return _out(args, d.as_dict(), f"created {d.slug} version {d.current_version} (model {d.model})")


def cmd_update(args: argparse.Namespace) -> int:
    d = _service().update(_user(args), args.slug, _spec(args.file))
    return _out(args, d.as_dict(), f"updated {d.slug}: now version {d.current_version} (model {d.model}); "
                                   "older versions keep their values")


def cmd_validate(args: argparse.Namespace) -> int:
    checked = _service().validate(_user(args), _spec(args.file))
    data = {"valid": True, "source": checked.source.name, "expression": checked.expression,
            "filter": checked.filter}
    return _out(args, data, f"valid: {checked.spec.type} over {checked.source.name}"
                            + (f"; expression {checked.expression}" if checked.expression else "")
                            + (f"; filter {checked.filter}" if checked.filter else ""))


def estimate_line(est: Any) -> str:
    """One line: the estimate in its unit (PostgreSQL's planner cost; on Spark the bytes of the
    optimized plan, also in a readable size), the rows, the budget and the verdict."""
    verdict = "within budget" if est.within_budget else "OVER BUDGET (create would refuse it)"
    if est.unit == "bytes":
        from metricsmith.spark.custom_metrics import human_size as size

        return (f"estimated bytes {est.cost:,.0f} ({size(est.cost)}), rows {est.rows:,.0f}, "
                f"budget {size(est.budget)}: {verdict}")
    return f"estimated cost {est.cost:,.0f}, rows {est.rows:,.0f}, budget {est.budget:,.0f}: {verdict}"


def cmd_estimate(args: argparse.Namespace) -> int:
    est = _service().estimate(_user(args), _spec(args.file))
    _out(args, {"cost": est.cost, "unit": est.unit, "rows": est.rows, "budget": est.budget,
                "within_budget": est.within_budget, "sql": est.sql}, estimate_line(est))
    return 0 if est.within_budget else 1


def cmd_list(args: argparse.Namespace) -> int:
    defs = _service().list_metrics(_user(args), include_archived=args.all)
    return _out(args, [d.as_dict() for d in defs], "\n".join(_def_line(d) for d in defs) or "(no metrics visible)")


def cmd_show(args: argparse.Namespace) -> int:
    svc = _service()
    d = svc.show(_user(args), args.slug, args.version)
    versions = svc.versions(_user(args), args.slug)
    lines = [_def_line(d), f"name: {d.name}", f"model: {d.model}"]
    if d.run_status:
        lines.append(f"last run: {d.run_status}" + (f": {d.run_error}" if d.run_error else ""))
    lines.append("spec:")
    lines += [f"  {k}: {json.dumps(v)}" for k, v in d.spec.items()]
    lines += ["versions: " + ", ".join(f"v{v['version']} by {v['created_by']} at {v['created_at']:%Y-%m-%d %H:%M}"
                                        f" cost {v['estimated_cost']:,.0f}" for v in versions)]
    return _out(args, d.as_dict() | {"versions": versions}, "\n".join(lines))


def cmd_archive(args: argparse.Namespace) -> int:
    d = _service().archive(_user(args), args.slug)
    return _out(args, d.as_dict(), f"archived {d.slug}; run `metricsmith metrics compile` to remove its models")


def cmd_compile(args: argparse.Namespace) -> int:
    svc = _service()
    r = svc.compile()
    return _out(args, r.__dict__, f"{svc.generated_dir}: {len(r.written)} written, {len(r.unchanged)} unchanged, "
                                  f"{len(r.removed)} removed; models: {', '.join(r.models)}")


def cmd_run(args: argparse.Namespace) -> int:
    try:
        run = _service().run(full_refresh=args.full_refresh)
    except DbtError as exc:
        print(f"metricsmith: {exc}", file=sys.stderr)
        return 1
    status = run.node_status
    _out(args, {"nodes": status, "failures": [f.as_dict() for f in run.failures]},
         "\n".join(f"{k.split('.')[-1]:<48} {v}" for k, v in sorted(status.items())))
    for f in run.failures:
        print(f"metricsmith: custom metric {f.slug} version {f.version} failed (the others were published): "
              f"{f.error}", file=sys.stderr)
    return 1 if run.failures else 0


def _fmt(v: Any) -> str:
    return "" if v is None else f"{float(v):,.2f}"


def cmd_values(args: argparse.Namespace) -> int:
    svc = _service()
    d = svc.show(_user(args), args.slug, args.version)
    if d.run_status == "error":
        print(f"metricsmith: {d.model} failed at its last run, so it has no values: {d.run_error}", file=sys.stderr)
        return 1
    rows = svc.values(_user(args), args.slug, version=args.version, start=args.start, end=args.end)
    return _out(args, rows, "\n".join(value_lines(rows)) if rows else "(no values yet: run `metricsmith metrics run`)")


def value_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Custom metric values as text: each growth figure with its basis marker (none on ``full``)
    and its basis, and the legend when a figure is not on the ``full`` basis."""
    from metricsmith.query import BASIS_LEGEND, basis_mark, plural

    lines = [f"{'period_start':<12} {'dimensions':<32} {'value':>16} {'previous':>16} {'growth %':>11}  basis"]
    for r in rows:
        basis = r.get("growth_basis")
        growth = "" if r["growth_pct"] is None else _fmt(r["growth_pct"]) + basis_mark(basis)
        days = "" if r.get("growth_basis_days") is None else f" ({plural(r['growth_basis_days'], 'day')})"
        lines.append(f"{r['period_start']!s:<12} {json.dumps(r['dimensions']):<32} {_fmt(r['value']):>16} "
                     f"{_fmt(r['previous_value']):>16} {growth:>11}  {basis or ''}{days}")
    if any(r.get("growth_basis") not in (None, "full") for r in rows):
        lines.append(f"({BASIS_LEGEND})")
    return lines


def cmd_backfill(args: argparse.Namespace) -> int:
    try:
        run = _service().backfill(_user(args), args.slug, args.start, args.end)
    except DbtError as exc:
        print(f"metricsmith: {exc}", file=sys.stderr)
        return 1
    _out(args, run.node_status, f"backfilled {args.slug} {args.start}..{args.end}: "
                                + ", ".join(f"{k.split('.')[-1]} {v}" for k, v in run.node_status.items()))
    for f in run.failures:
        print(f"metricsmith: custom metric {f.slug} version {f.version} failed: {f.error}", file=sys.stderr)
    return 1 if run.failures else 0


def cmd_user(args: argparse.Namespace) -> int:
    _service().add_user(args.user_id, args.org, is_org_admin=args.admin, teams=tuple(args.team))
    return _out(args, {"user_id": args.user_id, "organization_id": args.org, "admin": args.admin, "teams": args.team},
                f"user {args.user_id}: organization {args.org}{' (admin)' if args.admin else ''}"
                + (f", teams {', '.join(args.team)}" if args.team else ""))
