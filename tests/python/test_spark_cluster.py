"""`metricsmith spark up|status|down`: a standalone cluster (one master, two workers) on loopback;
the rollups run on it end to end and equal the Python reference; down leaves no process."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
from _spark import insert_spark_events, spark_available, spark_session
from rollups_reference import diff_tables, fetch_tables, reference
from test_rollups import edge_case_events

from metricsmith.cli.main import main
from metricsmith.config import load_settings
from metricsmith.spark import publish, rollups
from metricsmith.spark.cluster import LocalSparkCluster

pytestmark = [spark_available]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_cluster_up_run_down(tmp_path: Path, conn: psycopg.Connection[Any],
                             capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICSMITH_SPARK_HOME", str(tmp_path / "spark"))
    assert main(["spark", "status"]) == 1
    assert "no local Spark cluster" in capsys.readouterr().out
    try:
        assert main(["spark", "up", "--port", "7177", "--ui-port", "8180"]) == 0
        out = capsys.readouterr().out
        assert "2 workers" in out and "web UI:  http://127.0.0.1:" in out
        cluster = LocalSparkCluster(load_settings())
        state = cluster.read_state()
        assert state is not None and cluster.alive_workers(state.ui_port) == 2
        pids = [p.pid for p in state.processes]
        assert main(["spark", "status"]) == 0
        assert "workers registered: 2" in capsys.readouterr().out

        # the rollups on the cluster: executors on the two workers, the same numbers. The edge-case
        # events of February to April 2024 (29 February, empty days, a quarter boundary, invalid
        # rows, the late user's first load): a spine of ~40 days, not the whole data's ~1400
        # (all of it is checked locally by test_spark_rollups)
        events, late = edge_case_events(seed=5)
        sample = [e for e in events + late
                  if e.occurred_at is None or date(2024, 2, 1) <= e.occurred_at.date() <= date(2024, 4, 30)]
        for session in spark_session(tmp_path / "spark", master=state.url):
            insert_spark_events(session, sample)
            result = rollups.run_rollups(full_refresh=True, timezone="UTC")
            assert result.application_id.startswith("app-")  # a standalone-cluster application
            assert result.master == state.url
            executors = session.sparkContext._jsc.sc().getExecutorMemoryStatus().size()
            assert executors == 3  # the driver and one executor per worker
            publish.publish()
            problems = diff_tables(reference(sample, "UTC"), fetch_tables(conn))
            assert not problems, "\n".join(problems)
    finally:
        assert main(["spark", "down"]) == 0
    assert "stopped 3 Spark process(es)" in capsys.readouterr().out
    assert not [pid for pid in pids if _alive(pid)]
    assert not (tmp_path / "spark" / "cluster.json").exists()
    assert main(["spark", "down"]) == 0
    assert "no local Spark cluster running" in capsys.readouterr().out
