"""Table locations and small storage helpers that work on a local folder and on S3 alike."""

from __future__ import annotations

import json
import operator
from contextlib import contextmanager
from functools import reduce
from typing import TYPE_CHECKING
from urllib.parse import unquote

from workbook import lineage, names
from workbook.config import get_settings

if TYPE_CHECKING:  # the simulator (numpy, pandas) is imported only where a manifest is read
    from workbook.simulator import SimulationConfig


def location(table: names.Location) -> str:
    """The path of a (bucket, name) location in the active profile."""
    return get_settings().location(table)


def shown(path: str) -> str:
    """A location as a notebook shows it: the local lakehouse folder reads ``<lakehouse>``."""
    return path.replace(str(get_settings().lakehouse), "<lakehouse>")


def checkpoint_of(table_path: str) -> str:
    """A streaming query's checkpoint lives beside the table it writes."""
    return f"{table_path}/_checkpoint"


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


def _commit_actions(spark, fs, commit) -> list[dict]:
    """The actions of one commit file of a Delta log (``commit``: a Hadoop path)."""
    stream = fs.open(commit)
    try:
        text = spark._jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def commit_notes(spark, path: str):
    """The notes (``userMetadata``) of a Delta table's commits, newest first; None for a
    commit without one. Read from the log's files, without a Spark job."""
    fs, pattern = _fs_path(spark, f"{path}/_delta_log/*.json")
    logged = (status.getPath() for status in fs.globStatus(pattern) or [])
    commits = [c for c in logged if c.getName().removesuffix(".json").isdigit()]
    for commit in sorted(commits, key=lambda c: c.getName(), reverse=True):
        actions = _commit_actions(spark, fs, commit)
        info = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
        yield info.get("userMetadata")


def is_empty(spark, path: str) -> bool:
    """Whether the Delta table at ``path`` is as ``ensure_table`` made it: its only commit
    added no file. Read from the log, without a Spark job."""
    if table_version(spark, path) != 0:
        return False
    fs, first = _fs_path(spark, f"{path}/_delta_log/{0:020d}.json")
    return not any("add" in action for action in _commit_actions(spark, fs, first))


def read_text(spark, path: str) -> str:
    return "\n".join(spark.sparkContext.textFile(path, 1).collect())


def save_simulation(spark, config: SimulationConfig) -> None:
    """Record the simulated period beside the raw events: later notebooks read it from here."""
    write_text(spark, location(names.SIMULATION_MANIFEST), config.to_json())


def load_simulation(spark) -> SimulationConfig:
    from workbook.simulator import SimulationConfig

    return SimulationConfig.from_json(read_text(spark, location(names.SIMULATION_MANIFEST)))


def exists(spark, path: str) -> bool:
    fs, hadoop_path = _fs_path(spark, path)
    return bool(fs.exists(hadoop_path))


def is_delta_table(spark, path: str) -> bool:
    from delta.tables import DeltaTable

    return bool(DeltaTable.isDeltaTable(spark, path))


def table_version(spark, path: str) -> int:
    """The latest committed version of the Delta table at ``path``.

    Read from a listing of the table's log (each commit is a numbered JSON file), without a
    Spark job: the scoring stream asks it at every micro-batch.
    """
    fs, commits = _fs_path(spark, f"{path}/_delta_log/*.json")
    stems = (status.getPath().getName().removesuffix(".json") for status in fs.globStatus(commits))
    return max(int(stem) for stem in stems if stem.isdigit())


def table_versions(spark, tables) -> dict[str, int]:
    """The latest version of each table, by table name: what a job that reads them pins."""
    return {table.name: table_version(spark, location(table)) for table in tables}


def read_table(spark, table: names.Location, version: int | None = None):
    """A Delta table as of ``version`` (time travel), or its latest version."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(location(table))


def files_added(spark, path: str, since: int, until: int) -> list[str]:
    """The data files that the commits of versions ``since`` + 1 to ``until`` added, read from
    the commits' entries in the Delta log (kept 30 days), without rebuilding either version."""
    commits = [f"{path}/_delta_log/{v:020d}.json" for v in range(since + 1, until + 1)]
    added = spark.read.schema("add struct<path: string>").json(commits).dropna()
    return [f"{path}/{unquote(r.add.path)}" for r in added.collect()]


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


def ensure_table(spark, path: str, schema, partition_by: tuple[str, ...] = ()) -> None:
    """Create an empty Delta table at ``path`` unless one is there."""
    from delta.tables import DeltaTable

    builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(schema)
    if partition_by:
        builder = builder.partitionedBy(*partition_by)
    builder.execute()


def _append_into_empty(spark, path: str, rows) -> None:
    """What a MERGE into the empty table at ``path`` would write (every key is new), in one
    job instead of a dozen: a file per partition, as a MERGE writes them, not one per task."""
    by = _partition_columns(spark, path)
    (rows.repartition(*by) if by else rows).write.format("delta").mode("append").save(path)


def _partition_columns(spark, path: str) -> list[str]:
    from delta.tables import DeltaTable

    return list(DeltaTable.forPath(spark, path).detail().first()["partitionColumns"])


def merge_new_rows(spark, path: str, rows, keys: list[str]) -> None:
    """Insert the rows whose keys the table does not hold yet: replays change nothing."""
    from delta.tables import DeltaTable

    if is_empty(spark, path):
        _append_into_empty(spark, path, rows)
        return
    condition = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    DeltaTable.forPath(spark, path).alias("t").merge(
        rows.alias("s"), condition
    ).whenNotMatchedInsertAll().execute()


@contextmanager
def commit_note(spark, note: str):
    """Delta commits made in the block carry ``note`` (their ``userMetadata``)."""
    key = "spark.databricks.delta.commitInfo.userMetadata"
    spark.conf.set(key, note)
    try:
        yield
    finally:
        spark.conf.unset(key)


def upsert(spark, path: str, rows, keys: list[str], made_from=()) -> dict[str, int]:
    """Insert new keys and update changed rows; identical rows are left alone, and when
    every row is stored as it is, nothing is committed.

    Returns the inserted and updated row counts. ``made_from``: the tables ``rows`` were
    computed from, for the lineage graph (Spark's listener does not see a MERGE's source
    tables, nor through a checkpointed plan).
    """
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    target = DeltaTable.forPath(spark, path)
    _require_columns(path, target.toDF().columns, rows.columns)
    if is_empty(spark, path):
        _append_into_empty(spark, path, rows)
        _record("upsert", made_from, path)
        written = DeltaTable.forPath(spark, path).history(1).collect()[0]["operationMetrics"]
        return {"inserted": int(written.get("numOutputRows", 0)), "updated": 0}
    stored, within = target.toDF(), F.lit(True)
    if by := _partition_columns(spark, path):
        # Only the partitions the rows fall in are read, by the join and by the MERGE.
        values = [r[0] for r in rows.select(by[0]).distinct().collect()]
        stored, within = stored.filter(F.col(by[0]).isin(values)), F.col(f"t.{by[0]}").isin(values)
    # Only the rows that are new or differ from the stored ones go through the MERGE: a
    # rerun costs one join instead of a MERGE's two, and commits nothing.
    same = [F.col(f"s.{c}").eqNullSafe(F.col(f"t.{c}")) for c in rows.columns]
    differing = rows.alias("s").join(stored.alias("t"), same, "left_anti").localCheckpoint()
    _record("upsert", made_from, path)
    if differing.isEmpty():
        return {"inserted": 0, "updated": 0}
    on = reduce(operator.and_, [F.col(f"t.{k}") == F.col(f"s.{k}") for k in keys], within)
    target.alias("t").merge(
        differing.alias("s"), on
    ).whenMatchedUpdateAll().whenNotMatchedInsertAll().execute()
    metrics = DeltaTable.forPath(spark, path).history(1).collect()[0]["operationMetrics"]
    return {
        "inserted": int(metrics.get("numTargetRowsInserted", 0)),
        "updated": int(metrics.get("numTargetRowsUpdated", 0)),
    }


def append(spark, path: str, rows, made_from=()) -> None:
    """Add ``rows`` (new keys only) to the Delta table at ``path``: one job, where a MERGE
    runs a dozen. ``made_from`` as for ``upsert``."""
    _require_columns(path, spark.read.format("delta").load(path).columns, rows.columns)
    rows.write.format("delta").mode("append").save(path)
    _record("append", made_from, path)


def _record(job: str, made_from, path: str) -> None:
    if made_from:
        lineage.record(job, map(lineage.table, made_from), [lineage.at(path)])


def _require_columns(path: str, stored: list[str], written: list[str]) -> None:
    """A table made by an earlier version of the workbook lacks a column: say what to do."""
    if missing := [c for c in written if c not in stored]:
        raise ValueError(
            f"The table at {path} has no column {', '.join(missing)}: an earlier version of "
            "the workbook made it. Start again from an empty lakehouse (`make reset` locally, "
            "`make stack-reset` on the stack) and run the notebooks again."
        )


def upsert_few(spark, path: str, rows, keys: list[str]) -> dict[str, int]:
    """``upsert`` for a few rows (a day's metrics): most reruns then write nothing at all.

    The table's rows with those keys are compared on the driver: new rows are appended,
    and only when a stored row differs does the whole set go through a MERGE (a MERGE costs
    about a dozen Spark jobs, an append one).
    """
    from pyspark.sql import functions as F

    from workbook.spark import local_frame

    def key(row) -> tuple:
        return tuple(row[k] for k in keys)

    wanted = rows.collect()
    table = spark.read.format("delta").load(path)
    stored = {
        key(row): row.asDict()
        for row in table.filter(F.col(keys[0]).isin({row[keys[0]] for row in wanted})).collect()
    }
    new = [row for row in wanted if key(row) not in stored]
    changed = [row for row in wanted if key(row) in stored and stored[key(row)] != row.asDict()]
    if changed:
        upsert(spark, path, local_frame(spark, wanted, rows.schema), keys)
    elif new:
        local_frame(spark, new, rows.schema).write.format("delta").mode("append").save(path)
    return {"inserted": len(new), "updated": len(changed)}
