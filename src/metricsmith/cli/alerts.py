"""CLI: ``metricsmith alerts validate|list|test RULE|silence RULE|deliveries|evaluate``.

The rule file is ``alerts.yml`` in the project root unless ``-f`` or ``METRICSMITH_ALERTS_FILE``
says otherwise. Errors are :class:`metricsmith.errors.UserFacingError` subclasses (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

import psycopg

from metricsmith import db, migrate
from metricsmith.alerts import channels, conditions, delivery, incidents, silences
from metricsmith.alerts.errors import AlertError, AlertRuleError, ExpressionError
from metricsmith.alerts.evaluate import evaluate, list_incidents
from metricsmith.alerts.expr import parse_duration
from metricsmith.alerts.rules import Rule, RuleSet, load_file
from metricsmith.config import load_settings
from metricsmith.core.schema import marts_schema


def _duration(text: str) -> int:
    try:
        return parse_duration(text)
    except ExpressionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _when(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO date or time, got {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("alerts", help="alert rules (alerts.yml): validate, list, test, silence, deliveries, evaluate")
    asub = p.add_subparsers(dest="alerts_command", metavar="ACTION")
    asub.required = True

    def add(name: str, help_: str, handler: Any) -> argparse.ArgumentParser:
        q = asub.add_parser(name, help=help_)
        q.add_argument("-f", "--file", help="rule file (default: alerts.yml in the project root, "
                                            "or env METRICSMITH_ALERTS_FILE)")
        q.add_argument("--json", action="store_true", help="machine-readable output")
        q.set_defaults(handler=handler)
        return q

    add("validate", "check the rule file (every problem with its line); nothing is evaluated", cmd_validate)
    add("list", "the rules, their open incidents and silences", cmd_list)
    q = add("test", "evaluate one rule now without changing any incident; show the message and payload", cmd_test)
    q.add_argument("rule")
    q.add_argument("--send", action="store_true", help="also send the payload to the rule's channels (status 'test')")
    q = add("silence", "silence a rule's notifications for a while (recorded, shown by list)", cmd_silence)
    q.add_argument("rule")
    q.add_argument("--for", dest="seconds", type=_duration, required=True, help="how long, e.g. 30m, 2h, 1d")
    q.add_argument("--reason", required=True, help="why (shown to whoever looks next)")
    q.add_argument("--by", help="who silences (default: the login name)")
    q = add("deliveries", "notification delivery attempts, newest first", cmd_deliveries)
    q.add_argument("--failed", action="store_true", help="only failed attempts")
    q.add_argument("--limit", type=int, default=30)
    q = add("evaluate", "evaluate every rule now: incidents, notifications, delivery", cmd_evaluate)
    q.add_argument("--at", type=_when, help="evaluate as of this time (ISO; default now)")
    q.add_argument("--kind", action="append", help="only rules of this kind (repeatable)")


def _connect() -> psycopg.Connection[Any]:
    """An autocommit connection to a database with the alert tables (migrations applied first)."""
    settings = load_settings()
    migrate.upgrade(settings)
    return db.connect(settings, autocommit=True)


def _load(args: argparse.Namespace) -> RuleSet:
    return load_file(args.file)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        ruleset = _load(args)
    except AlertRuleError as exc:
        for problem in exc.problems[1:]:
            print(problem, file=sys.stderr)
        raise
    kinds = sorted({r.kind for r in ruleset.rules})
    print(f"{ruleset.source}: {len(ruleset.rules)} rule(s) ({', '.join(kinds) or 'none'}), "
          f"{len(ruleset.channels)} channel(s): OK")
    return 0


def _condition(rule: Rule) -> str:
    if rule.kind == "metric_threshold":
        target = f"custom metric {rule.custom_metric} " if rule.custom_metric else ""
        dims = f" where {rule.dimensions}" if rule.dimensions else ""
        return f"{target}{rule.grain}: {rule.expr} ({rule.basis}; {rule.for_periods} period(s)){dims}"
    if rule.kind == "realtime_threshold":
        return f"{rule.expr} for {rule.for_seconds}s"
    if rule.kind == "job_overdue":
        return f"{rule.job} not completed {rule.within // 60} min after its schedule"
    if rule.kind == "data_stale":
        return f"{rule.grain or 'every grain'} older than promised (grace {rule.grace // 60} min)"
    return f"{rule.job or 'any job'} ends FAILED or PARTIAL"


def cmd_list(args: argparse.Namespace) -> int:
    ruleset = _load(args)
    with _connect() as conn:
        open_incidents = [i for i in list_incidents(conn, limit=1000) if i["state"] != "RESOLVED"]
        quiet = silences.active(conn)
    if args.json:
        _print_json({"rules": [{"name": r.name, "kind": r.kind, "severity": r.severity, "condition": _condition(r),
                                "channels": list(r.channels)} for r in ruleset.rules],
                     "open_incidents": open_incidents, "silences": list(quiet.values())})
        return 0
    print(f"{'rule':<24} {'kind':<19} {'severity':<9} {'state':<14} condition -> channels")
    for r in ruleset.rules:
        mine = [i for i in open_incidents if i["rule"] == r.name]
        state = ", ".join(sorted({i["state"] for i in mine})) or "ok"
        print(f"{r.name:<24} {r.kind:<19} {r.severity:<9} {state:<14} {_condition(r)} -> "
              f"{', '.join(r.channels) or '(no channel)'}")
        if r.name in quiet:
            s = quiet[r.name]
            print(f"  silenced until {s['ends_at']:%Y-%m-%d %H:%M} UTC by {s['created_by']}: {s['reason']}")
        for i in mine:
            print(f"  {i['state']} since {i['fired_at'] or i['first_seen']} {i['labels']}: {i['summary']}")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    ruleset = _load(args)
    rule = ruleset.rule(args.rule)
    now = datetime.now(UTC)
    with _connect() as conn:
        ctx = conditions.Context(conn, now, marts_schema(), load_settings())
        observations = conditions.observe(rule, ctx)
    if not observations:
        print(f"{rule.name}: nothing to observe")
        return 0
    for obs in observations:
        status = "firing" if obs.active else "ok"
        fake = {"id": None, "fingerprint": incidents.fingerprint(obs.labels), "labels": obs.labels,
                "value": obs.value, "summary": obs.summary, "fired_at": now if obs.active else None,
                "resolved_at": None}
        body = incidents.payload(rule, fake, "firing" if obs.active else "test")
        print(f"{rule.name} {obs.labels}: {status.upper()} - {obs.summary}")
        print(f"  message: {body['message']}")
        if args.json or args.send:
            _print_json(body)
        if args.send:
            _send(ruleset, rule, {**body, "status": "test"})
    return 0


def _send(ruleset: RuleSet, rule: Rule, body: dict[str, Any]) -> None:
    for name in rule.channels:
        try:
            code = channels.send(ruleset.channels[name], body)
            print(f"  sent to {name}: ok{f' (HTTP {code})' if code else ''}")
        except channels.DeliveryError as exc:
            raise AlertError(f"channel {name}: {exc}") from None


def cmd_silence(args: argparse.Namespace) -> int:
    ruleset = _load(args)
    rule = ruleset.rule(args.rule)
    with _connect() as conn:
        row = silences.add(conn, rule.name, args.seconds, args.reason, by=args.by)
    if args.json:
        _print_json(row)
    else:
        print(f"{rule.name}: silenced until {row['ends_at']:%Y-%m-%d %H:%M} UTC by {row['created_by']} "
              f"({row['reason']})")
    return 0


def cmd_deliveries(args: argparse.Namespace) -> int:
    with _connect() as conn:
        rows = delivery.recent(conn, failed_only=args.failed, limit=args.limit)
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no delivery attempts" + (" failed" if args.failed else ""))
        return 0
    for r in rows:
        outcome = "ok" if r["ok"] else f"FAILED {r['error']}"
        code = f" HTTP {r['status_code']}" if r["status_code"] else ""
        print(f"{r['attempted_at']:%Y-%m-%d %H:%M:%S} {r['rule']} {r['event']} -> {r['channel']} attempt "
              f"{r['attempt']}{code} {r['duration_ms']} ms: {outcome} [{r['notification_status']}]")
    return 1 if args.failed and rows else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    migrate.upgrade()
    result = evaluate(_load(args), now=args.at, kinds=tuple(args.kind) if args.kind else None)
    if args.json:
        _print_json(result.to_dict())
    else:
        print(result.render())
    return 1 if result.errors else 0
