"""A standalone Spark cluster on loopback: one master and two workers from pyspark's own
``spark-class`` (``metricsmith spark up|down|status``), for tests, demos and a single box.

The processes' pids, ports and work directory are kept in ``$METRICSMITH_HOME/spark/cluster.json``
so every later command finds them; ``down`` stops each process group (TERM, then KILL) and
removes the work directory, leaving no process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from metricsmith.config import Settings
from metricsmith.embedded import port_free
from metricsmith.errors import UserFacingError
from metricsmith.spark.config import require_java, require_pyspark, spark_settings

DEFAULT_MASTER_PORT = 7077
DEFAULT_UI_PORT = 8080
WORKERS = 2


class SparkClusterError(UserFacingError):
    """The local Spark cluster cannot be started or found; the message says why."""


@dataclass(frozen=True)
class Process:
    role: str  # "master" | "worker"
    pid: int
    port: int
    ui_port: int

    @property
    def alive(self) -> bool:
        return _alive(self.pid)


@dataclass(frozen=True)
class ClusterState:
    master_port: int
    ui_port: int
    work_dir: str
    processes: list[Process]

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.master_port}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}/"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie child counts as gone
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


def _free_port(preferred: int, taken: set[int]) -> int:
    port = preferred
    while port in taken or not port_free(port):
        port += 1
    taken.add(port)
    return port


def _spark_home() -> Path:
    require_pyspark()
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path, seconds: float = 90.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            raise SparkClusterError(f"a Spark process exited at start (code {proc.returncode}): {' | '.join(tail)}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise SparkClusterError(f"Spark did not listen on 127.0.0.1:{port} within {seconds:.0f} s (log: {log})")


class LocalSparkCluster:
    """One master and :data:`WORKERS` workers (one core, ``worker_memory`` each) on 127.0.0.1."""

    def __init__(self, settings: Settings, worker_memory: str = "1g") -> None:
        self.spark = spark_settings(settings)
        self.state_file = self.spark.home / "cluster.json"
        self.work_dir = self.spark.home / "cluster"
        self.worker_memory = worker_memory

    def read_state(self) -> ClusterState | None:
        if not self.state_file.exists():
            return None
        raw = json.loads(self.state_file.read_text())
        return ClusterState(master_port=raw["master_port"], ui_port=raw["ui_port"], work_dir=raw["work_dir"],
                            processes=[Process(**p) for p in raw["processes"]])

    def _start(self, role: str, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        env = {**os.environ, "SPARK_HOME": str(_spark_home()), "SPARK_LOCAL_IP": "127.0.0.1",
               "SPARK_NO_DAEMONIZE": "1", "SPARK_LOG_DIR": str(self.work_dir)}
        cls = ("org.apache.spark.deploy.master.Master" if role == "master"
               else "org.apache.spark.deploy.worker.Worker")
        with log.open("ab") as out:
            return subprocess.Popen([str(_spark_home() / "bin" / "spark-class"), cls, *args], env=env,
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)

    def up(self, master_port: int = DEFAULT_MASTER_PORT, ui_port: int = DEFAULT_UI_PORT) -> ClusterState:
        """Start the cluster, or return the running one."""
        current = self.read_state()
        if current is not None and all(p.alive for p in current.processes):
            return current
        if current is not None:
            self.down()
        require_java()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        taken: set[int] = set()
        port, ui = _free_port(master_port, taken), _free_port(ui_port, taken)
        procs: list[Process] = []
        try:
            master = self._start("master", ["--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui)],
                                 self.work_dir / "master.log")
            procs.append(Process("master", master.pid, port, ui))
            self._save(port, ui, procs)
            _wait_listening(port, master, self.work_dir / "master.log")
            for i in range(WORKERS):
                wport, wui = _free_port(port + 100 + i, taken), _free_port(ui + 1 + i, taken)
                log = self.work_dir / f"worker-{i + 1}.log"
                worker = self._start("worker", ["--host", "127.0.0.1", "--port", str(wport), "--webui-port", str(wui),
                                                "--cores", "1", "--memory", self.worker_memory,
                                                "--work-dir", str(self.work_dir / f"worker-{i + 1}"),
                                                f"spark://127.0.0.1:{port}"], log)
                procs.append(Process("worker", worker.pid, wport, wui))
                self._save(port, ui, procs)
                _wait_listening(wport, worker, log)
            self._wait_registered(ui)
        except BaseException:
            self.down()
            raise
        state = self.read_state()
        assert state is not None
        return state

    def _save(self, port: int, ui: int, procs: list[Process]) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps({"master_port": port, "ui_port": ui, "work_dir": str(self.work_dir),
                                               "processes": [asdict(p) for p in procs]}))

    def alive_workers(self, ui_port: int) -> int:
        """Workers the master lists as ALIVE (its web UI's JSON)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=3) as resp:
                info = json.loads(resp.read())
        except (OSError, ValueError):
            return 0
        return sum(1 for w in info.get("workers", []) if w.get("state") == "ALIVE")

    def _wait_registered(self, ui_port: int, seconds: float = 60.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.alive_workers(ui_port) >= WORKERS:
                return
            time.sleep(0.5)
        raise SparkClusterError(f"the workers did not register with the master within {seconds:.0f} s "
                                f"(logs in {self.work_dir})")

    def down(self, timeout: float = 20.0) -> int:
        """Stop every process of the cluster; returns how many were running."""
        state = self.read_state()
        if state is None:
            return 0
        running = [p for p in state.processes if p.alive]
        for p in reversed(running):  # workers first
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(p.alive for p in running):
            for p in running:  # reap our own children
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(p.pid, os.WNOHANG)
            time.sleep(0.2)
        for p in running:
            if p.alive:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
        self.state_file.unlink(missing_ok=True)
        shutil.rmtree(state.work_dir, ignore_errors=True)
        return len(running)
