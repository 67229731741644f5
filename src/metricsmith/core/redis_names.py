"""Redis key names of one metricsmith namespace (``cache``, ``rt``), built one way.

A namespace's root is ``<prefix><space>:``; on a Redis Cluster it is the hash tag
``{<prefix><space>}:``, so every key under it hashes to ONE slot (a Lua script or a MULTI/EXEC
over several of them would fail with CROSSSLOT otherwise). Keys under a root are
``<root><kind>:<part>`` (e.g. ``cache:v:<key>``, ``rt:c:<metric>``).
"""

from __future__ import annotations


def namespace_root(prefix: str, space: str, *, tagged: bool) -> str:
    """``<prefix><space>:``, or with ``tagged`` (a cluster) ``{<prefix><space>}:``."""
    return "{" + prefix + space + "}:" if tagged else f"{prefix}{space}:"


def child(root: str, kind: str, part: str) -> str:
    """The key of ``part`` among the keys of one ``kind`` under ``root``: ``<root><kind>:<part>``."""
    return f"{root}{kind}:{part}"
