"""The one SparkSession of a process, configured from :mod:`metricsmith.spark.config`.

dbt-spark's ``method: session`` calls ``SparkSession.builder.getOrCreate()`` in this process, so
creating the session here first (:func:`get_session`) gives the loader, dbt and the publish step
the same master, warehouse, metastore and settings. Tables are Parquet (no Delta or Iceberg:
their jars would have to be downloaded); the catalog is an embedded Derby Hive metastore under
``$METRICSMITH_HOME/spark`` (one process at a time uses it).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from metricsmith.config import Settings, env_flag, load_settings
from metricsmith.spark.config import SparkSettings, require_java, require_pyspark, spark_settings

_LOCK = threading.Lock()


_LOG4J = """rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = spark %p %c{1}: %m%n
# "already exists" of create ... if not exists, logged as an error with its stack trace
logger.hms.name = org.apache.hadoop.hive.metastore.RetryingHMSHandler
logger.hms.level = off
"""


def _log_config(spark: SparkSettings) -> str:
    """Spark's own log: errors only, one line each (its default prints INFO/WARN at start)."""
    path = spark.home / "log4j2.properties"
    if not path.exists() or path.read_text() != _LOG4J:
        path.write_text(_LOG4J)
    return str(path)


#: ``METRICSMITH_SPARK_SMALL_DATA=1``: tuning for tiny tables (the tests, a demo): each mart is one
#: statement of a few dozen joins over a few thousand rows, where Spark's fixed costs dominate - a job
#: per broadcast and per adaptive stage, and a Java compile per whole-stage-codegen stage. These change
#: the physical plan only, never a result.
ENV_SMALL_DATA = "METRICSMITH_SPARK_SMALL_DATA"
SMALL_DATA_CONF = {
    "spark.sql.adaptive.enabled": "false",
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.autoBroadcastJoinThreshold": "-1",
}


def small_data() -> bool:
    return env_flag(ENV_SMALL_DATA, os.environ.get(ENV_SMALL_DATA))


def spark_conf(spark: SparkSettings) -> dict[str, str]:
    """Every Spark setting metricsmith relies on (profiles/profiles.yml target spark states the same)."""
    spark.home.mkdir(parents=True, exist_ok=True)
    return {**_base_conf(spark), **(SMALL_DATA_CONF if small_data() else {})}


def _base_conf(spark: SparkSettings) -> dict[str, str]:
    return {
        "spark.master": spark.master,
        "spark.app.name": "metricsmith",
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": spark.warehouse,
        "spark.hadoop.javax.jdo.option.ConnectionURL":
            f"jdbc:derby:;databaseName={spark.metastore};create=true",
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={spark.home} "
                                         f"-Dderby.stream.error.file={spark.home / 'derby.log'} "
                                         f"-Dlog4j2.configurationFile={_log_config(spark)}",
        # timestamps are instants shown in UTC, as raw.events' contract says
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(spark.shuffle_partitions),
        "spark.sql.adaptive.enabled": "true",
        # insert_overwrite rewrites only the partitions a run produces
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.hadoop.hive.exec.dynamic.partition.mode": "nonstrict",
        # dbt-spark sets the same (its SQL is written for non-ANSI casts)
        "spark.sql.ansi.enabled": "false",
        "spark.sql.sources.default": "parquet",
        "spark.ui.showConsoleProgress": "false",
        "spark.ui.enabled": "true" if spark.master.startswith("spark://") else "false",
        # an executor must fit a worker (`metricsmith spark up`: 1g each), or the application waits
        # for resources forever
        "spark.executor.memory": os.environ.get("METRICSMITH_SPARK_EXECUTOR_MEMORY", "").strip() or "512m",
    }


def export_environment(spark: SparkSettings) -> None:
    """The variables the profile's ``spark`` target reads, for dbt runs of this process."""
    os.environ["METRICSMITH_SPARK_MASTER"] = spark.master
    os.environ["METRICSMITH_SPARK_WAREHOUSE"] = spark.warehouse
    os.environ["METRICSMITH_SPARK_HOME"] = str(spark.home)
    os.environ["METRICSMITH_SPARK_SHUFFLE_PARTITIONS"] = str(spark.shuffle_partitions)


def get_session(settings: Settings | None = None) -> Any:
    """This process's SparkSession (created on first use; Java 17+ and the spark extra checked)."""
    require_pyspark()
    require_java()
    from pyspark.sql import SparkSession

    spark = spark_settings(settings or load_settings())
    with _LOCK:
        active = SparkSession.getActiveSession()
        if active is not None:
            return active
        export_environment(spark)
        builder = SparkSession.builder
        for key, value in spark_conf(spark).items():
            builder = builder.config(key, value)
        session = builder.enableHiveSupport().getOrCreate()
        session.sparkContext.setLogLevel("ERROR")
        return session


def stop_session() -> None:
    """Stop this process's SparkSession, if any (the next get_session starts a new one)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        return
    with _LOCK:
        active = SparkSession.getActiveSession()
        if active is not None:
            active.stop()


def application_id(session: Any) -> str:
    return str(session.sparkContext.applicationId)
