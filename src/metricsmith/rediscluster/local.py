"""A local Redis Cluster on loopback for tests and demos: 3 masters, 3 replicas, one data dir.

``metricsmith redis-cluster up`` starts six ``redis-server`` processes (the machine's binary, or
``METRICSMITH_REDIS_SERVER``; Redis 7 or newer, for sharded pub/sub) on consecutive ports
(default 7101-7106, cluster bus +10000; the next free range when taken, never 6379 or the
embedded 63799), joins them with ``CLUSTER MEET``, gives each master a third of the 16384 slots
and makes each other node a replica of one master. The nodes' data lives under
``METRICSMITH_HOME/redis-cluster`` (outside git: ``.metricsmith/`` is ignored) and the state
(ports, binary, data dir) in ``METRICSMITH_HOME/redis-cluster.json``, so every later command finds
it (``METRICSMITH_REDIS_CLUSTER=1`` without a URL uses it). ``down`` stops the nodes and removes
their data. The node timeout is short (``cluster-node-timeout``, default 2000 ms) so that a
killed master is replaced within a few seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from metricsmith.config import DEFAULT_EMBEDDED_PG_PORT, DEFAULT_EMBEDDED_REDIS_PORT, Settings
from metricsmith.embedded import port_free
from metricsmith.errors import UserFacingError

DEFAULT_BASE_PORT = 7101
MASTERS = 3
REPLICAS_PER_MASTER = 1
SLOTS = 16384
ENV_SERVER = "METRICSMITH_REDIS_SERVER"
#: ports a local cluster never takes (the usual Redis, the embedded servers)
RESERVED_PORTS = frozenset({6379, DEFAULT_EMBEDDED_REDIS_PORT, DEFAULT_EMBEDDED_PG_PORT, 5432})


class ClusterError(UserFacingError):
    """The local cluster cannot be started, found or stopped; the message says why and what to do."""


@dataclass(frozen=True)
class Node:
    port: int
    pid: int | None
    role: str  # "master" | "replica" | "down"
    slots: int
    master_port: int | None

    @property
    def up(self) -> bool:
        return self.role != "down"


def server_binary() -> Path:
    """The ``redis-server`` to run: ``METRICSMITH_REDIS_SERVER``, else the one on PATH (Redis >= 7)."""
    chosen = os.environ.get(ENV_SERVER, "").strip() or shutil.which("redis-server")
    if not chosen:
        raise ClusterError("no redis-server binary: install Redis 7 (apt-get install redis-server) "
                           f"or set {ENV_SERVER}=/path/to/redis-server")
    path = Path(chosen)
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, check=False, timeout=10).stdout
    match = re.search(r"v=(\d+)\.(\d+)", out)
    if not match or int(match.group(1)) < 7:
        raise ClusterError(f"{path} is {out.strip() or 'not a redis-server'}; the cluster needs Redis 7 or newer "
                           f"(sharded pub/sub); set {ENV_SERVER}")
    return path


def _free(port: int) -> bool:
    return port not in RESERVED_PORTS and 1024 < port < 65536 and port_free(port)


def free_base_port(preferred: int = DEFAULT_BASE_PORT, count: int = MASTERS * (1 + REPLICAS_PER_MASTER)) -> int:
    """The first base port from ``preferred`` up whose ``count`` ports and bus ports (+10000) are free."""
    base = preferred
    while base + count + 10_000 < 65_536:
        ports = range(base, base + count)
        if all(_free(p) and _free(p + 10_000) for p in ports):
            return base
        base += count
    raise ClusterError(f"no {count} free consecutive ports from {preferred} up (with their +10000 bus ports)")


def _ping(port: int, timeout: float = 0.5) -> redis.Redis | None:
    # no retries: a node that does not answer at once is "down" (redis-py retries for seconds by default)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=timeout, socket_connect_timeout=timeout,
                         retry=Retry(NoBackoff(), 0))
    try:
        client.ping()
    except redis.RedisError:
        client.close()
        return None
    return client


class LocalCluster:
    """The local cluster of one ``METRICSMITH_HOME`` (or of an explicit ``root`` folder, for tests)."""

    def __init__(self, settings: Settings, *, root: Path | None = None, node_timeout_ms: int = 2000) -> None:
        self.root = root or settings.home
        self.data_dir = self.root / "redis-cluster"
        self.state_file = self.root / "redis-cluster.json"
        self.node_timeout_ms = node_timeout_ms

    # ------------------------------------------------------------------ state
    def ports(self) -> list[int]:
        """The ports of the cluster recorded here ([] when none was started)."""
        if not self.state_file.is_file():
            return []
        return [int(p) for p in json.loads(self.state_file.read_text())["ports"]]

    def url(self) -> str:
        """``redis+cluster://127.0.0.1:p1,...`` of the running cluster (ClusterError when it is not up)."""
        ports = self.ports()
        if not ports or not any(_ping(p) for p in ports):
            raise ClusterError("METRICSMITH_REDIS_CLUSTER=1 without METRICSMITH_REDIS_URL uses the local cluster, "
                               "which is not running: start it with `metricsmith redis-cluster up` (or set "
                               "METRICSMITH_REDIS_URL=redis+cluster://host:port)")
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)

    # ------------------------------------------------------------------ up
    def up(self, base_port: int = DEFAULT_BASE_PORT, *, wait_s: float = 30.0) -> list[int]:
        """Start (or find running) the six nodes and form the cluster; returns their ports."""
        running = self.ports()
        if running and all(_ping(p) for p in running) and self._state_ok(running[0]):
            return running
        if running:
            self.down()
        binary = server_binary()
        base = free_base_port(base_port)
        ports = list(range(base, base + MASTERS * (1 + REPLICAS_PER_MASTER)))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps({"ports": ports, "binary": str(binary),
                                               "data_dir": str(self.data_dir)}, indent=2) + "\n")
        for port in ports:
            self._start_node(binary, port)
        self._form(ports, wait_s)
        return ports

    def _node_dir(self, port: int) -> Path:
        return self.data_dir / str(port)

    def _start_node(self, binary: Path, port: int) -> None:
        folder = self._node_dir(port)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        result = subprocess.run(
            [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(self.node_timeout_ms), "--cluster-require-full-coverage", "no",
             "--dir", str(folder), "--daemonize", "yes", "--pidfile", str(folder / "redis.pid"),
             "--logfile", str(folder / "redis.log"), "--save", "", "--appendonly", "no",
             "--repl-diskless-sync-delay", "0", "--shutdown-timeout", "0"],
            capture_output=True, text=True, check=False, timeout=30)
        deadline = time.monotonic() + 15
        while _ping(port) is None:
            if result.returncode != 0 or time.monotonic() > deadline:
                log = folder / "redis.log"
                tail = log.read_text()[-1500:] if log.exists() else ""
                raise ClusterError(f"redis-server did not start on 127.0.0.1:{port}: "
                                   f"{result.stderr.strip()} (log {log}: {tail.strip()[-400:]})")
            time.sleep(0.05)

    def _form(self, ports: list[int], wait_s: float) -> None:
        clients = {p: redis.Redis(host="127.0.0.1", port=p, socket_timeout=5, decode_responses=True) for p in ports}
        masters, replicas = ports[:MASTERS], ports[MASTERS:]
        first = clients[ports[0]]
        for port in ports[1:]:
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        per = SLOTS // MASTERS
        for index, port in enumerate(masters):
            start, end = index * per, (SLOTS - 1 if index == MASTERS - 1 else (index + 1) * per - 1)
            clients[port].execute_command("CLUSTER", "ADDSLOTSRANGE", start, end)
        ids = {p: clients[p].execute_command("CLUSTER", "MYID") for p in ports}
        deadline = time.monotonic() + wait_s
        for index, port in enumerate(replicas):
            master = masters[index % MASTERS]
            while True:  # a node can replicate a master only once it knows it
                try:
                    clients[port].execute_command("CLUSTER", "REPLICATE", ids[master])
                    break
                except redis.ResponseError:
                    if time.monotonic() > deadline:
                        raise ClusterError(f"node {port} never learnt of master {master}") from None
                    time.sleep(0.1)
        while not all(self._state_ok(p) for p in ports) or not all(self._synced(clients[p]) for p in replicas):
            if time.monotonic() > deadline:
                raise ClusterError(f"the cluster on ports {ports[0]}-{ports[-1]} did not reach cluster_state:ok "
                                   f"within {wait_s:g} s; see the logs under {self.data_dir}")
            time.sleep(0.1)
        for client in clients.values():
            client.close()

    @staticmethod
    def _synced(client: redis.Redis) -> bool:
        """A replica that finished its first sync (``master_link_status:up``)."""
        try:
            return client.info("replication").get("master_link_status") == "up"
        except redis.RedisError:
            return False

    @staticmethod
    def _state_ok(port: int) -> bool:
        client = _ping(port)
        if client is None:
            return False
        try:
            info = client.execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            return "cluster_state:ok" in text and "cluster_known_nodes:6" in text
        except redis.RedisError:
            return False
        finally:
            client.close()

    # ------------------------------------------------------------------ status / down
    def pid(self, port: int) -> int | None:
        path = self._node_dir(port) / "redis.pid"
        with contextlib.suppress(OSError, ValueError):
            return int(path.read_text().strip())
        return None

    def status(self) -> list[Node]:
        """Every recorded node: its role (``down`` when it does not answer), slots and master."""
        nodes = []
        for port in self.ports():
            client = _ping(port)
            if client is None:
                nodes.append(Node(port, self.pid(port), "down", 0, None))
                continue
            try:
                nodes.append(self._describe(client, port))
            finally:
                client.close()
        return nodes

    def _describe(self, client: redis.Redis, port: int) -> Node:
        raw: Any = client.execute_command("CLUSTER", "NODES")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        by_id: dict[str, int] = {}
        mine: list[str] = []
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 8:
                continue
            by_id[fields[0]] = int(fields[1].split("@")[0].rsplit(":", 1)[1] or 0)
            if "myself" in fields[2]:
                mine = fields
        slots = 0
        for part in mine[8:]:
            if part.startswith("["):
                continue
            low, _, high = part.partition("-")
            slots += int(high or low) - int(low) + 1
        role = "master" if "master" in mine[2] else "replica"
        master = by_id.get(mine[3]) if role == "replica" else None
        return Node(port, self.pid(port), role, slots, master)

    def state(self) -> str:
        """``cluster_state`` as one live node sees it (``down`` when none answers)."""
        for port in self.ports():
            client = _ping(port)
            if client is None:
                continue
            try:
                raw: Any = client.execute_command("CLUSTER", "INFO")
            except redis.RedisError:
                continue
            finally:
                client.close()
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            match = re.search(r"cluster_state:(\w+)", text)
            return match.group(1) if match else "?"
        return "down"

    def kill(self, port: int) -> None:
        """SIGKILL one node (tests: a master that dies)."""
        pid = self.pid(port)
        if pid is None:
            raise ClusterError(f"no pid recorded for node {port}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _ping(port, timeout=0.2) is not None and time.monotonic() < deadline:  # gone for everyone
            time.sleep(0.02)

    def down(self) -> int:
        """Stop every node and remove the data; returns how many nodes were running."""
        stopped = 0
        for port in self.ports():
            client = _ping(port)
            if client is not None:
                stopped += 1
                with contextlib.suppress(redis.RedisError):  # NOW: no waiting for lagging replicas
                    client.execute_command("SHUTDOWN", "NOSAVE", "NOW")
                client.close()
            deadline = time.monotonic() + 10  # (a killed daemon may linger as a zombie: watch the port)
            while _ping(port, timeout=0.2) is not None and time.monotonic() < deadline:
                time.sleep(0.05)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.state_file.unlink(missing_ok=True)
        return stopped

