"""What ``metricsmith status`` says about the Spark engine (only when METRICSMITH_ENGINE=spark)."""

from __future__ import annotations

from metricsmith.config import Settings
from metricsmith.spark.config import MIN_JAVA, engine, java_version, pyspark_version, spark_settings


def report(settings: Settings) -> bool:
    """Print the engine lines; False when Spark cannot run (no Java 17+, no pyspark)."""
    if engine() != "spark":
        return True
    spark = spark_settings(settings)
    print(f"engine:   spark  master {spark.master}  warehouse {spark.warehouse}")
    major, detail = java_version()
    java_ok = major is not None and major >= MIN_JAVA
    print(f"java:     {detail}" if java_ok else
          f"java:     MISSING: Spark needs Java {MIN_JAVA}+; {detail}")
    version = pyspark_version()
    print(f"pyspark:  {version}" if version else "pyspark:  MISSING: pip install -e '.[spark]'")
    return java_ok and version is not None
