"""Engine selection and the Spark settings, each from one environment variable.

``METRICSMITH_ENGINE`` picks where the dbt models run: ``postgres`` (default) or ``spark``.
On Spark, ``METRICSMITH_SPARK_MASTER`` (default ``local[*]``; ``spark://host:7077`` for a
cluster) and ``METRICSMITH_SPARK_WAREHOUSE`` (default ``$METRICSMITH_HOME/spark/warehouse``;
any Hadoop-compatible path) say where it runs and where the Parquet tables live. The serving
PostgreSQL stays the one of ``METRICSMITH_DATABASE_URL`` (the marts are published there).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from metricsmith.config import ConfigError, Settings, load_settings

ENV_ENGINE = "METRICSMITH_ENGINE"
ENV_SPARK_MASTER = "METRICSMITH_SPARK_MASTER"
ENV_SPARK_WAREHOUSE = "METRICSMITH_SPARK_WAREHOUSE"
ENV_SPARK_SHUFFLE_PARTITIONS = "METRICSMITH_SPARK_SHUFFLE_PARTITIONS"
#: Spark's state folder (metastore, staging, local cluster); default $METRICSMITH_HOME/spark
ENV_SPARK_HOME = "METRICSMITH_SPARK_HOME"
ENGINES = ("postgres", "spark")
#: the dbt target of profiles/profiles.yml that runs the models on Spark
SPARK_TARGET = "spark"
#: the oldest Java that pyspark 4 runs on
MIN_JAVA = 17

_MASTER = re.compile(r"local(\[(\*|[1-9][0-9]*)\])?|spark://[A-Za-z0-9.\-\[\]:]+(,[A-Za-z0-9.\-\[\]:]+)*")


def engine(name: str | None = None) -> str:
    """The engine: ``name`` (a command's ``--engine``) or ``METRICSMITH_ENGINE``, default postgres."""
    raw = (name if name is not None else os.environ.get(ENV_ENGINE, "")).strip().lower() or "postgres"
    if raw not in ENGINES:
        raise ConfigError(f"{ENV_ENGINE}={raw!r}: use one of {', '.join(ENGINES)}")
    return raw


@dataclass(frozen=True)
class SparkSettings:
    master: str
    warehouse: str
    #: Spark's own state (metastore, event logs, standalone cluster) under METRICSMITH_HOME
    home: Path
    shuffle_partitions: int

    @property
    def metastore(self) -> Path:
        return self.home / "metastore_db"


def spark_settings(settings: Settings | None = None) -> SparkSettings:
    settings = settings or load_settings()
    master = os.environ.get(ENV_SPARK_MASTER, "").strip() or "local[*]"
    if not _MASTER.fullmatch(master):
        raise ConfigError(f"{ENV_SPARK_MASTER}={master!r}: use local, local[N], local[*] or spark://host:port")
    home_raw = os.environ.get(ENV_SPARK_HOME, "").strip()
    home = Path(home_raw).expanduser().resolve() if home_raw else settings.home / "spark"
    warehouse = os.environ.get(ENV_SPARK_WAREHOUSE, "").strip() or str(home / "warehouse")
    raw = os.environ.get(ENV_SPARK_SHUFFLE_PARTITIONS, "").strip() or "4"
    if not raw.isdigit() or not 1 <= int(raw) <= 100_000:
        raise ConfigError(f"{ENV_SPARK_SHUFFLE_PARTITIONS}={raw!r}: use a whole number from 1")
    return SparkSettings(master=master, warehouse=warehouse, home=home, shuffle_partitions=int(raw))


def java_version() -> tuple[int | None, str]:
    """(major version or None, one line saying what was found) of the ``java`` Spark will use."""
    java_home = os.environ.get("JAVA_HOME", "").strip()
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        return None, "no java found (install Java 17+, e.g. apt-get install openjdk-17-jre-headless, or set JAVA_HOME)"
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{java} does not run: {exc}"
    text = (out.stderr or out.stdout).strip()
    m = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not m:
        return None, f"{java}: cannot read its version from {text.splitlines()[0] if text else 'no output'!r}"
    major = int(m.group(1)) if m.group(1) != "1" else int(m.group(2) or 0)
    return major, f"Java {major} ({java})"


def require_java() -> None:
    major, detail = java_version()
    if major is None or major < MIN_JAVA:
        raise ConfigError(f"Spark needs Java {MIN_JAVA}+: {detail}")


def pyspark_version() -> str | None:
    try:
        import pyspark
    except ImportError:
        return None
    return str(pyspark.__version__)


def require_pyspark() -> None:
    if pyspark_version() is None:
        raise ConfigError("the Spark engine needs the spark extra: pip install -e '.[spark]'")
