"""Alerts: job failures, stale data and metric thresholds reach people once, and resolve once.

- :mod:`.rules` loads ``alerts.yml`` (line-aware YAML, :mod:`.yamlload`) into checked
  :class:`.rules.RuleSet` objects; every problem is an :class:`.errors.AlertRuleError` naming the
  file and line, and nothing is evaluated from a file with an error;
- :mod:`.conditions` observes each rule (job log, marts, custom metric values, Redis rates);
- :mod:`.incidents` keeps ``metricsmith.alert_incidents``: PENDING -> FIRING -> RESOLVED per rule
  and labels fingerprint, with ``for:`` and ``resolve_after`` damping, and queues exactly one
  firing and one resolve notification per incident (``metricsmith.alert_notifications``);
- :mod:`.delivery` sends queued notifications through :mod:`.channels` (webhook with HMAC,
  Alertmanager, SMTP, log, file), at least once, one attempt per row of
  ``metricsmith.alert_deliveries``, with exponential backoff between attempts;
- :mod:`.evaluate` ties it together under one advisory lock (one evaluation at a time):
  :func:`.evaluate.evaluate`, :func:`.evaluate.after_job_run`, :func:`.evaluate.list_incidents`.
"""
