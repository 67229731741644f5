"""The cache's layout: parts that import only downwards (no cycle, not even inside a function),
plain imports instead of import-by-string, and the compute lock that is redis-py's own ``Lock``
(a lock taken by any redis-py client holds the cache's computation back)."""

from __future__ import annotations

import ast
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.lock import Lock

from metricsmith.cache import CacheConfig, TwoTierCache, load_cache_config

SRC = Path(__file__).resolve().parents[2] / "src" / "metricsmith"
CACHE = SRC / "cache"


def _imports(path: Path) -> set[str]:
    """Every ``metricsmith.cache.*`` module ``path`` imports, at any depth (functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("metricsmith.cache"):
            if node.module == "metricsmith.cache":  # a submodule, or a name the package re-exports
                for alias in node.names:
                    sub = (CACHE / f"{alias.name}.py").exists()
                    found.add(f"metricsmith.cache.{alias.name}" if sub else "metricsmith.cache")
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("metricsmith.cache"))
    return found


def _module(path: Path) -> str:
    return "metricsmith.cache" if path.name == "__init__.py" else f"metricsmith.cache.{path.stem}"


def test_cache_modules_form_no_import_cycle() -> None:
    graph = {_module(p): _imports(p) - {_module(p)} for p in CACHE.glob("*.py")}
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", "import cycle: " + " -> ".join([*trail, module])
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            visit(target, [*trail, module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])
    assert "metricsmith.cache.core" not in graph["metricsmith.cache.stats"]
    # the parts do not reach up to the class that composes them
    for part in ("keys", "entry", "l1", "l2", "singleflight", "circuit", "fence", "bus", "stats"):
        assert "metricsmith.cache.core" not in graph[f"metricsmith.cache.{part}"], part


@pytest.mark.parametrize("path", [*sorted(CACHE.glob("*.py")), SRC / "query.py"], ids=lambda p: p.name)
def test_no_import_by_string(path: Path) -> None:
    text = path.read_text()
    assert "importlib" not in text and "__import__" not in text


@pytest.fixture()
def cache() -> Iterator[TwoTierCache]:
    c = TwoTierCache(config=CacheConfig(**{**load_cache_config().__dict__, "xfetch_beta": 0.0}))
    assert c.wait_until_listening()
    c.clear()
    yield c
    c.close()


def test_compute_lock_is_redis_py_lock(cache: TwoTierCache) -> None:
    key = "layout:lock"
    lock = cache.l2.lock(key)
    assert isinstance(lock, Lock) and lock.name == cache.keys.lock(key)
    # another process holds the lock (any redis-py client): the cache waits instead of computing
    other = Lock(cache._redis(), cache.keys.lock(key), timeout=5)
    assert other.acquire(blocking=False)
    calls: list[float] = []
    out: list[object] = []

    def read() -> None:
        out.append(cache.get_or_compute(key, lambda: calls.append(time.monotonic()) or [1, 2], ttl=60))

    started = time.monotonic()
    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.3)
    assert calls == []  # still waiting for the holder
    other.release()     # the holder gave up without storing: the waiter computes it itself
    reader.join(timeout=10)
    assert out == [[1, 2]] and len(calls) == 1 and calls[0] - started >= 0.3
    # no lock is left behind, and the value it stored is what the next read gets
    assert not Lock(cache._redis(), cache.keys.lock(key)).locked()
    assert cache.get_or_compute(key, lambda: [9], ttl=60) == [1, 2]
