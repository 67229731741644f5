from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metricsmith.config import ConfigError, PostgresParams, env_flag, load_settings


def test_defaults_use_embedded_servers(tmp_path: Path) -> None:
    s = load_settings({"METRICSMITH_HOME": str(tmp_path)})
    assert s.embedded_postgres and s.embedded_redis
    assert s.home == tmp_path
    assert s.timezone == "UTC"
    assert s.redis_prefix == "metricsmith:"


def test_default_home_is_project_root() -> None:
    s = load_settings({})
    assert s.home.name == ".metricsmith"
    assert (s.home.parent / "dbt_project.yml").is_file()


def test_urls_select_real_servers() -> None:
    s = load_settings(
        {
            "METRICSMITH_DATABASE_URL": "postgresql://u:p%40ss@db.example:6543/metrics",
            "METRICSMITH_REDIS_URL": "redis://127.0.0.1:6379/2",
            "METRICSMITH_TIMEZONE": "Europe/Berlin",
        }
    )
    assert not s.embedded_postgres and not s.embedded_redis
    params = PostgresParams.from_url(s.database_url or "")
    assert params == PostgresParams("db.example", 6543, "u", "p@ss", "metrics")
    assert s.tz.key == "Europe/Berlin"


def test_empty_values_count_as_unset() -> None:
    s = load_settings({"METRICSMITH_DATABASE_URL": "  ", "METRICSMITH_TIMEZONE": ""})
    assert s.embedded_postgres and s.timezone == "UTC"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"METRICSMITH_TIMEZONE": "Mars/Olympus"}, "METRICSMITH_TIMEZONE"),
        ({"METRICSMITH_DATABASE_URL": "mysql://x/y"}, "METRICSMITH_DATABASE_URL"),
        ({"METRICSMITH_REDIS_URL": "http://x"}, "METRICSMITH_REDIS_URL"),
        ({"METRICSMITH_DATABASE_URL": "postgresql://h:notaport/db"}, "port"),
        ({"METRICSMITH_REDIS_PREFIX": "bad prefix"}, "METRICSMITH_REDIS_PREFIX"),
    ],
)
def test_bad_values_are_clear_errors(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_settings(env)


ON = ("1", "true", "yes", "on")
OFF = ("", "0", "false", "no", "off")


@given(word=st.sampled_from(ON + OFF), cases=st.lists(st.booleans(), min_size=5, max_size=5),
       left=st.sampled_from(["", " ", "\t"]), right=st.sampled_from(["", " ", "\n"]))
def test_env_flag_reads_every_spelling(word: str, cases: list[bool], left: str, right: str) -> None:
    """Every on/off setting (cache, API, Redis Cluster, the unit-test gate, Spark's small-data
    tuning, dbt's log) is read by env_flag: any case, spaces around ignored, unset is off."""
    text = left + "".join(c.upper() if up else c for c, up in zip(word, cases, strict=False)) + right
    assert env_flag("METRICSMITH_X", text) is (word in ON)
    assert env_flag("METRICSMITH_X", None) is False


@given(st.text(max_size=12).filter(lambda t: t.strip().lower() not in ON + OFF))
def test_env_flag_refuses_anything_else_naming_the_variable(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^METRICSMITH_X=.*: use 1 or 0 \(true or false, yes or no, on or off\)$"):
        env_flag("METRICSMITH_X", text)


def test_every_flag_setting_refuses_a_bad_value_in_one_line() -> None:
    from metricsmith.api.config import ENV_PUBLIC_READ, load_api_settings
    from metricsmith.cache.config import load_cache_config

    with pytest.raises(ConfigError, match="METRICSMITH_CACHE_ENABLED='maybe': use 1 or 0"):
        load_cache_config({"METRICSMITH_CACHE_ENABLED": "maybe"})
    with pytest.raises(ConfigError, match=f"{ENV_PUBLIC_READ}='maybe': use 1 or 0"):
        load_api_settings({ENV_PUBLIC_READ: "maybe"})
    assert load_cache_config({"METRICSMITH_CACHE_L1_ENABLED": " Off "}).l1_enabled is False
