"""Table locations and small storage helpers that work on a local folder and on S3 alike."""

from __future__ import annotations

from workbook.config import get_settings


def location(table: tuple[str, str]) -> str:
    """The path of a (bucket, name) location in the active profile."""
    return get_settings().location(table)


def _fs_path(spark, path: str):
    jvm = spark._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    return hadoop_path.getFileSystem(spark._jsc.hadoopConfiguration()), hadoop_path


def write_text(spark, path: str, text: str) -> None:
    """Write (overwrite) a small text file through Hadoop's file system layer."""
    fs, hadoop_path = _fs_path(spark, path)
    stream = fs.create(hadoop_path, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()


def read_text(spark, path: str) -> str:
    return "\n".join(spark.sparkContext.textFile(path, 1).collect())


def exists(spark, path: str) -> bool:
    fs, hadoop_path = _fs_path(spark, path)
    return bool(fs.exists(hadoop_path))


def is_delta_table(spark, path: str) -> bool:
    from delta.tables import DeltaTable

    return bool(DeltaTable.isDeltaTable(spark, path))


def table_version(spark, path: str) -> int:
    """The latest committed version of the Delta table at ``path``."""
    from delta.tables import DeltaTable

    return int(DeltaTable.forPath(spark, path).history(1).collect()[0]["version"])


def history(spark, path: str, limit: int = 10):
    """A table's recent commits: version, operation and the row counts they wrote."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    metrics = F.col("operationMetrics")
    return (
        DeltaTable.forPath(spark, path)
        .history(limit)
        .select(
            "version",
            "operation",
            F.coalesce(metrics["numTargetRowsInserted"], metrics["numOutputRows"]).alias(
                "rows_written"
            ),
        )
        .orderBy("version")
    )
