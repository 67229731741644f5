"""metricsmith: trustworthy product metrics from raw events (dbt + PostgreSQL + Redis + Prefect)."""

__version__ = "0.1.0"
