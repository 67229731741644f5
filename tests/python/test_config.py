from __future__ import annotations

from pathlib import Path

import pytest

from metricsmith.config import ConfigError, PostgresParams, load_settings


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
