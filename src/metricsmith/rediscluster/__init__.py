"""The one Redis client factory: a standalone ``redis.Redis`` or a ``redis.cluster.RedisCluster``.

Every part of metricsmith that talks to Redis (realtime service, stream producer and consumer,
cache L2, invalidation bus, statistics, locks) gets its client from :func:`client`:

* ``METRICSMITH_REDIS_URL=redis+cluster://host:port[,host:port...]`` - a Redis Cluster, the nodes
  listed are the seeds (any one that answers gives the whole topology);
* ``METRICSMITH_REDIS_CLUSTER=1`` with a ``redis://`` URL - the same, seeded by that node;
* ``METRICSMITH_REDIS_CLUSTER=1`` without a URL - the local cluster of ``metricsmith
  redis-cluster up`` (:mod:`metricsmith.rediscluster.local`);
* anything else - the standalone server of ``metricsmith.db.redis_url`` (embedded by default).

On a cluster every key name carries a hash tag (:mod:`metricsmith.realtime.keys`,
:mod:`metricsmith.cache.keys`), so each script, transaction and multi-key command stays in one
slot. :data:`TRANSIENT` lists the errors a cluster raises while a master is being replaced.
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ClusterDownError, ClusterError, SlotNotCoveredError, TryAgainError

from metricsmith import db
from metricsmith.config import CLUSTER_SCHEME, ConfigError, Settings, cluster_nodes, load_settings

#: errors meaning "Redis is (for now) not answering": retry later, fail open meanwhile. A cluster
#: adds CLUSTERDOWN / MASTERDOWN (ClusterError) and TRYAGAIN; all are ``redis.RedisError``s.
TRANSIENT: tuple[type[redis.RedisError], ...] = (redis.ConnectionError, redis.TimeoutError, ClusterError, TryAgainError)


class _Cluster(RedisCluster):
    """``RedisCluster`` whose "no master for this slot" (mid-failover) is a ``redis.RedisError``
    (ClusterDownError) like every other outage, so callers that fail open on ``RedisError`` do."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute_command(*args, **kwargs)
        except SlotNotCoveredError as exc:
            raise ClusterDownError(f"CLUSTERDOWN {exc}") from exc

#: what the cluster client may be given besides the standalone client's keyword arguments
_CLUSTER_ONLY = ("require_full_coverage", "cluster_error_retry_attempts")


def url(settings: Settings | None = None) -> str:
    """The Redis URL in use: the configured one, the local cluster's, or the embedded server's."""
    return db.redis_url(settings)


def is_cluster_url(text: str) -> bool:
    return urlsplit(text).scheme == CLUSTER_SCHEME


def client(settings: Settings | None = None, *, redis_url: str | None = None, cluster: bool | None = None,
           **kwargs: Any) -> Any:
    """A redis-py client for ``redis_url`` (default: the configured Redis), bytes replies.

    ``cluster`` forces the kind (default: a ``redis+cluster://`` URL or ``settings.redis_cluster``).
    The reply type is ``Any``: ``redis.Redis`` and ``RedisCluster`` share the commands metricsmith
    uses, and their stubs type replies as ``bytes | str`` (this client never decodes).
    """
    settings = settings or load_settings()
    target = redis_url or url(settings)
    kwargs.setdefault("socket_timeout", 5)
    kwargs.setdefault("socket_connect_timeout", 5)
    if cluster is None:
        cluster = settings.redis_cluster or is_cluster_url(target)
    if not cluster:
        for name in _CLUSTER_ONLY:
            kwargs.pop(name, None)
        return redis.Redis.from_url(target, **kwargs)
    return cluster_client(target, **kwargs)


def cluster_client(target: str, **kwargs: Any) -> RedisCluster:
    """``RedisCluster`` seeded by every node of a ``redis+cluster://`` URL (or one ``redis://`` node)."""
    parts = urlsplit(target)
    if parts.scheme == CLUSTER_SCHEME:
        nodes = [ClusterNode(host, port) for host, port in cluster_nodes(target)]
    elif parts.scheme in ("redis", "rediss"):
        nodes = [ClusterNode(parts.hostname or "127.0.0.1", parts.port or 6379)]
        if parts.scheme == "rediss":
            kwargs.setdefault("ssl", True)
    else:
        raise ConfigError(f"a Redis Cluster needs a redis:// or {CLUSTER_SCHEME}:// URL, got {target!r}")
    if parts.username:
        kwargs.setdefault("username", unquote(parts.username))
    if parts.password:
        kwargs.setdefault("password", unquote(parts.password))
    for key, value in parse_qsl(parts.query):
        if key in ("socket_timeout", "socket_connect_timeout"):
            kwargs[key] = float(value)
    kwargs.setdefault("cluster_error_retry_attempts", 2)
    # per-node pools as unbounded as redis.Redis's own (redis-py caps a cluster node at 100, so
    # 100 threads of one process plus the invalidation listener would fail with "Too many connections")
    kwargs.setdefault("max_connections", 2**31)
    return _Cluster(startup_nodes=nodes, **kwargs)


def is_cluster(redis_client: Any) -> bool:
    return isinstance(redis_client, RedisCluster)


def refresh(redis_client: Any) -> None:
    """After an error on a cluster: re-read the slot map (a replaced master is found as soon as
    the cluster elected it); a no-op on a standalone client, never raises."""
    if is_cluster(redis_client):
        with contextlib.suppress(Exception):
            redis_client.nodes_manager.initialize()


def describe(redis_client: Any) -> dict[str, Any]:
    """What health and stats show about the Redis side: the mode and, on a cluster, its state.

    ``{"mode": "standalone"}`` or ``{"mode": "cluster", "state": "ok" | "fail", "masters": n,
    "masters_failed": k, "replicas": r, "epoch": e}``. Raises redis errors (the caller reports them).
    """
    if not is_cluster(redis_client):
        return {"mode": "standalone"}
    info = redis_client.cluster_info(target_nodes=RedisCluster.RANDOM)
    if isinstance(info, dict) and info and isinstance(next(iter(info.values())), dict):
        info = next(iter(info.values()))
    masters = failed = replicas = 0
    for _node, node_info in dict(redis_client.cluster_nodes()).items():
        flags = str(node_info.get("flags", ""))
        if "master" in flags:
            masters += 1
            failed += "fail" in flags
        elif "slave" in flags:
            replicas += 1
    return {"mode": "cluster", "state": str(info.get("cluster_state", "?")), "masters": masters,
            "masters_failed": failed, "replicas": replicas,
            "epoch": int(info.get("cluster_current_epoch", 0) or 0)}
