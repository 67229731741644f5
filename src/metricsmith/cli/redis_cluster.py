"""``metricsmith redis-cluster up|down|status``: a local 3-master, 3-replica Redis Cluster on loopback."""

from __future__ import annotations

import argparse

from metricsmith.config import load_settings
from metricsmith.errors import port_number


def _up(args: argparse.Namespace) -> int:
    from metricsmith.rediscluster.local import LocalCluster

    cluster = LocalCluster(load_settings(), node_timeout_ms=args.node_timeout_ms)
    ports = cluster.up(args.port)
    print(f"Redis Cluster up: 3 masters + 3 replicas on 127.0.0.1:{ports[0]}-{ports[-1]} "
          f"(data {cluster.data_dir})")
    print(f"use it:  export METRICSMITH_REDIS_URL={cluster.url()}")
    print("   or:   export METRICSMITH_REDIS_CLUSTER=1   (with METRICSMITH_REDIS_URL unset)")
    return 0


def _down(_args: argparse.Namespace) -> int:
    from metricsmith.rediscluster.local import LocalCluster

    cluster = LocalCluster(load_settings())
    stopped = cluster.down()
    print(f"stopped {stopped} node(s); removed {cluster.data_dir}" if stopped else "no local Redis Cluster running")
    return 0


def _status(_args: argparse.Namespace) -> int:
    from metricsmith.rediscluster.local import LocalCluster

    cluster = LocalCluster(load_settings())
    nodes = cluster.status()
    if not nodes:
        print("no local Redis Cluster (start one with `metricsmith redis-cluster up`)")
        return 1
    state = cluster.state()
    print(f"cluster_state: {state}")
    for node in nodes:
        detail = (f"{node.slots} slots" if node.role == "master"
                  else f"replica of {node.master_port}" if node.role == "replica" else "not answering")
        print(f"  127.0.0.1:{node.port}  {node.role:<8} pid {node.pid or '-':<8} {detail}")
    return 0 if state == "ok" and all(n.up for n in nodes) else 1


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("redis-cluster", help="a local Redis Cluster (3 masters + 3 replicas) for tests and demos")
    rc = parser.add_subparsers(dest="redis_cluster_command", metavar="ACTION")
    rc.required = True
    p = rc.add_parser("up", help="start the local cluster (or report the running one)")
    p.add_argument("--port", type=port_number, default=7101,
                   help="first port (default 7101; the next free range of 6 is taken when busy)")
    p.add_argument("--node-timeout-ms", type=int, default=2000,
                   help="cluster-node-timeout: how long a master may be silent before it is replaced")
    p.set_defaults(handler=_up)
    p = rc.add_parser("down", help="stop the local cluster and remove its data")
    p.set_defaults(handler=_down)
    p = rc.add_parser("status", help="each node's role, slots and master; exit 1 unless all is well")
    p.set_defaults(handler=_status)
