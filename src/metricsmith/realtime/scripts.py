"""The realtime Lua scripts, read once from ``lua/*.lua`` (package data).

Every script receives every key it touches in ``KEYS`` (see :mod:`metricsmith.realtime.keys`);
``ARGV`` carries values only. ``rate_add.lua`` is a function shared by ``mark.lua`` and
``apply.lua`` and is prepended to them here. Callers load a script once per client with
``client.register_script(SOURCE)``.
"""

from __future__ import annotations

from importlib.resources import files


def _read(name: str) -> str:
    return files("metricsmith.realtime").joinpath("lua", name).read_text(encoding="utf-8")


_RATE_ADD = _read("rate_add.lua")

#: mark(): one RATE metric, every window (KEYS: its rate hashes)
MARK_LUA = _RATE_ADD + _read("mark.lua")
#: one stream batch applied atomically (KEYS: metricsmith.realtime.keys.apply_keys)
APPLY_LUA = _RATE_ADD + _read("apply.lua")

#: every script by file name (the tests check each one takes its keys from KEYS only)
SCRIPTS: dict[str, str] = {"mark.lua": MARK_LUA, "apply.lua": APPLY_LUA}
