"""Where the long-lived Prefect server runs: ``metricsmith ui`` records it, ``serve`` and
``jobs run`` find it.

Without ``PREFECT_API_URL`` every Prefect process (and every flow run ``serve`` starts) would
start its own temporary server (10-40 s each). So ``metricsmith ui`` writes
``$METRICSMITH_HOME/prefect-server.json`` (API URL, UI URL, pid) once its server answers and
removes it when it stops; :func:`find_api_url` returns the API to use: ``PREFECT_API_URL`` (or
the active Prefect profile's ``api.url``) when set, else the recorded server if it answers its
health check, else None - no server runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from metricsmith.config import Settings, load_settings

STATE_FILE = "prefect-server.json"


class NoServer(RuntimeError):
    """PREFECT_API_URL names a server that does not answer."""


@dataclass(frozen=True)
class ServerRecord:
    api_url: str
    ui_url: str
    host: str
    port: int
    pid: int
    started_at: str


def state_path(settings: Settings | None = None) -> Path:
    return (settings or load_settings()).home / STATE_FILE


def urls(host: str, port: int) -> tuple[str, str]:
    """(api_url, ui_url) for a server listening on ``host:port`` (a wildcard host is reached on loopback)."""
    reach = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    if ":" in reach and not reach.startswith("["):
        reach = f"[{reach}]"
    base = f"http://{reach}:{port}"
    return f"{base}/api", base


def record(host: str, port: int, pid: int, settings: Settings | None = None) -> ServerRecord:
    api_url, ui_url = urls(host, port)
    rec = ServerRecord(api_url=api_url, ui_url=ui_url, host=host, port=port, pid=pid,
                       started_at=datetime.now(UTC).isoformat(timespec="seconds"))
    path = state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(rec), indent=2) + "\n")
    tmp.replace(path)
    return rec


def clear(pid: int, settings: Settings | None = None) -> None:
    """Remove the record if it is still ours (a newer `metricsmith ui` may have replaced it)."""
    rec = read_record(settings)
    if rec is not None and rec.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            state_path(settings).unlink()


def read_record(settings: Settings | None = None) -> ServerRecord | None:
    try:
        doc = json.loads(state_path(settings).read_text())
        return ServerRecord(**doc)
    except (OSError, ValueError, TypeError):
        return None


def answers(api_url: str, timeout: float = 3.0) -> bool:
    """True when the Prefect API at ``api_url`` answers its health check."""
    import httpx

    try:
        response = httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def configured_api_url() -> str | None:
    """``PREFECT_API_URL`` from the environment or the active Prefect profile."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


def find_api_url(settings: Settings | None = None) -> tuple[str | None, str]:
    """The Prefect API to use and where it came from; (None, why) when no server runs.

    Raises :class:`NoServer` when ``PREFECT_API_URL`` is set but does not answer."""
    configured = configured_api_url()
    if configured:
        if not answers(configured):
            raise NoServer(f"PREFECT_API_URL={configured} does not answer (is the Prefect server running?)")
        return configured, "PREFECT_API_URL"
    rec = read_record(settings)
    if rec is None:
        return None, f"no Prefect server runs (none recorded in {state_path(settings)}; start one with `metricsmith ui`)"
    if not answers(rec.api_url):
        return None, f"no Prefect server runs (the one recorded in {state_path(settings)}, {rec.api_url}, does not answer)"
    return rec.api_url, str(state_path(settings))


def use_api_url(api_url: str) -> None:
    """Point this process (and the flow-run processes it starts) at ``api_url``."""
    os.environ["PREFECT_API_URL"] = api_url
    _refresh_prefect_settings()


def _refresh_prefect_settings() -> None:
    """Prefect caches its settings per process: re-read them (a process that has not loaded
    Prefect yet reads the environment when it does)."""
    if "prefect.context" in sys.modules:
        with contextlib.suppress(Exception):
            from prefect.context import refresh_global_settings_context

            refresh_global_settings_context()


#: Prefect's switch for the temporary server it starts when no API URL is set
EPHEMERAL_ENV = "PREFECT_SERVER_EPHEMERAL_ENABLED"


def forbid_ephemeral_server() -> None:
    """This process (and those it starts) never starts Prefect's temporary server: with no API
    URL a Prefect client call then raises instead of spending 10-40 s on a server start."""
    os.environ[EPHEMERAL_ENV] = "false"
    _refresh_prefect_settings()
