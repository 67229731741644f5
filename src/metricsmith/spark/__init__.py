"""Apache Spark as a second engine for the same dbt project (docs/spark.md)."""
