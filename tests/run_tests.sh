#!/usr/bin/env bash
# `make test`: the whole suite as two pytest processes side by side, so both cores work: the Spark
# modules (bound by Spark's JVM; their own Spark home) and everything else. Each pytest session
# has its own database, Redis prefix and dbt target folder (tests/python/conftest.py), and the
# embedded servers start once for both (a file lock). The Spark part's output follows the rest's;
# the exit status is the first failing part's. With arguments: one plain pytest run of those.
set -uo pipefail
py=${PYTHON:-.venv/bin/python}
if [ $# -gt 0 ]; then
  exec "$py" -m pytest "$@"
fi
shopt -s nullglob
spark=(tests/python/test_spark_*.py)
if [ ${#spark[@]} -eq 0 ]; then
  exec "$py" -m pytest
fi
# the servers in use (the embedded ones are started here when no URL is set), before either part
# starts them, so that they keep the normal priority
"$py" -c 'from metricsmith import db; db.database_url(); db.redis_url()' || exit $?
log=$(mktemp)
"$py" -m pytest -p no:cacheprovider "${spark[@]}" >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; rm -f "$log"' INT TERM
# the rest at a lower CPU priority (METRICSMITH_TEST_NICE, default 10): on a small machine the
# Spark part, the longer critical path, gets the cores when both want them
nice -n "${METRICSMITH_TEST_NICE:-10}" "$py" -m pytest "${spark[@]/#/--ignore=}"
rest=$?
wait "$pid"
spark_rc=$?
echo "=== the Spark tests (${#spark[@]} modules, run beside the others) ==="
cat "$log"
rm -f "$log"
if [ "$rest" -ne 0 ]; then exit "$rest"; fi
exit "$spark_rc"
