"""Sending one notification through one channel; a failure raises :class:`DeliveryError`.

- ``webhook``: POST the payload as JSON (it has a Slack-compatible ``text``). With ``secret_env``
  the header ``X-Metricsmith-Signature: sha256=<hex>`` is the HMAC-SHA256 of the exact body
  with the secret read from that environment variable (:func:`signature` verifies the same way);
- ``alertmanager``: POST ``<url>/api/v2/alerts`` with one alert (labels incl. ``alertname`` and
  ``severity``, annotations, ``startsAt``, ``endsAt`` when resolved), so its routing applies;
- ``email``: SMTP with :mod:`smtplib` (STARTTLS and login optional, password from ``password_env``);
- ``log``: one line on the ``metricsmith.alerts`` logger; ``file``: one JSON line appended.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import smtplib
import ssl
import urllib.error
import urllib.request
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from metricsmith.alerts.channels_spec import ChannelSpec
from metricsmith.config import project_root

SIGNATURE_HEADER = "X-Metricsmith-Signature"
log = logging.getLogger("metricsmith.alerts")


class DeliveryError(Exception):
    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def signature(secret: str, body: bytes) -> str:
    """The signature header value for ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise DeliveryError(f"environment variable {name} is not set")
    return value


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "metricsmith-alerts/1", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) checked on load
            return int(response.status)
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"HTTP {exc.code} from {url}", exc.code) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"cannot reach {url}: {reason}") from None


def _webhook(channel: ChannelSpec, payload: dict[str, Any]) -> int:
    assert channel.url is not None
    body = json.dumps(payload, sort_keys=True).encode()
    headers = {SIGNATURE_HEADER: signature(_env(channel.secret_env), body)} if channel.secret_env else {}
    return _post(channel.url, body, headers, channel.timeout)


def alertmanager_alert(payload: dict[str, Any]) -> dict[str, Any]:
    labels = {"alertname": payload["rule"], "severity": payload["severity"],
              **{k: str(v) for k, v in payload["labels"].items()}}
    alert: dict[str, Any] = {"labels": labels,
                             "annotations": {"summary": payload["message"], "description": payload["summary"],
                                             "value": "" if payload["value"] is None else str(payload["value"])},
                             "startsAt": payload["started_at"]}
    if payload["status"] == "resolved" and payload["resolved_at"]:
        alert["endsAt"] = payload["resolved_at"]
    return alert


def _alertmanager(channel: ChannelSpec, payload: dict[str, Any]) -> int:
    assert channel.url is not None
    body = json.dumps([alertmanager_alert(payload)]).encode()
    return _post(channel.url.rstrip("/") + "/api/v2/alerts", body, {}, channel.timeout)


def _email(channel: ChannelSpec, payload: dict[str, Any]) -> int | None:
    assert channel.host is not None and channel.sender is not None
    msg = EmailMessage()
    msg["Subject"] = f"[{payload['status'].upper()}] [{payload['severity']}] {payload['rule']}"
    msg["From"] = channel.sender
    msg["To"] = ", ".join(channel.to)
    msg.set_content(f"{payload['message']}\n\n{payload['summary']}\n\n" + json.dumps(payload, indent=2, sort_keys=True))
    try:
        with smtplib.SMTP(channel.host, channel.port, timeout=channel.timeout) as smtp:
            if channel.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if channel.username:
                smtp.login(channel.username, _env(channel.password_env) if channel.password_env else "")
            smtp.send_message(msg)
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"SMTP {channel.host}:{channel.port}: {exc}") from None
    return None


def _log(channel: ChannelSpec, payload: dict[str, Any]) -> None:
    log.warning("alert %s %s: %s", payload["rule"], payload["status"], payload["message"])


def _file(channel: ChannelSpec, payload: dict[str, Any]) -> None:
    assert channel.path is not None
    path = Path(channel.path)
    path = path if path.is_absolute() else project_root() / path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(payload, sort_keys=True) + "\n")
    except OSError as exc:
        raise DeliveryError(f"cannot append to {path}: {exc.strerror or exc}") from None


def send(channel: ChannelSpec, payload: dict[str, Any]) -> int | None:
    """Deliver ``payload``; the HTTP status (None for non-HTTP channels). Raises DeliveryError."""
    if channel.type == "webhook":
        return _webhook(channel, payload)
    if channel.type == "alertmanager":
        return _alertmanager(channel, payload)
    if channel.type == "email":
        return _email(channel, payload)
    if channel.type == "file":
        _file(channel, payload)
    else:
        _log(channel, payload)
    return None
