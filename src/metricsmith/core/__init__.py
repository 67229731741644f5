"""The shared core: the primitives every part of metricsmith uses, written once.

- :mod:`metricsmith.core.pglock`: the PostgreSQL advisory lock (one context manager, one key
  derivation, one waiting policy, one "who holds it" error);
- :mod:`metricsmith.core.dbt`: the one dbt invocation (process-wide lock, environment, target
  path, quiet/verbose) and its one outcome type;
- :mod:`metricsmith.core.status`: the job status values;
- :mod:`metricsmith.core.redis_names`: a Redis namespace's root (hash-tagged on a cluster) and
  the names under it (the cache's keys; the realtime layout's root).

Modules here import nothing from the rest of metricsmith except configuration, the database
connection helpers and the error base class, so every package may depend on them.
"""
