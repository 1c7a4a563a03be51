"""Exactly-once appends of streaming micro-batches, from a note on each commit.

A micro-batch that a restarted query runs again (its commit written, the checkpoint's not)
must not be appended twice. Each commit notes the query and batch it holds
(``userMetadata``), and a batch is skipped when the table's newest commit of its query
holds it or a later one. Delta's ``txnAppId`` would answer the same question, but from the
table's whole state, which it rebuilds at each commit: three Spark jobs, more than the
append of a live batch itself on two cores.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession

from workbook import lakehouse

NOTE = "streaming query "
# The newest batch each query appended to each table from this process. A query's log is read
# only at its first batch here: the one a restart may replay.
_appended: dict[tuple[str, str], int] = {}


def query_id(spark: SparkSession) -> str:
    """The id of the streaming query whose ``foreachBatch`` is running: its checkpoint's, so
    a restart keeps it and a fresh checkpoint writes again, as Delta's own sink would."""
    found = spark.sparkContext.getLocalProperty("sql.streaming.queryId")
    if not found:
        raise RuntimeError("a micro-batch is appended from a streaming query's foreachBatch only")
    return found


def last_committed(spark: SparkSession, path: str, query: str) -> int | None:
    """The newest batch of ``query`` that the table at ``path`` holds; None if none.

    Read from the commits' notes, newest first: usually the newest commit is the query's own.
    """
    ours = f"{NOTE}{query} "
    for note in lakehouse.commit_notes(spark, path):
        if note and note.startswith(ours):
            return int(note.removeprefix(ours))
    return None


def is_committed(spark: SparkSession, path: str, batch_id: int) -> bool:
    """Whether the running query's batch ``batch_id`` is in the table at ``path`` already."""
    query = query_id(spark)
    committed = _appended.get((path, query))
    if committed is None:
        committed = last_committed(spark, path, query)
    return committed is not None and committed >= batch_id


def append(rows: DataFrame, path: str, batch_id: int) -> None:
    """Append the running query's micro-batch ``batch_id``, noted on its commit."""
    query = query_id(rows.sparkSession)
    note = f"{NOTE}{query} {batch_id}"
    rows.write.format("delta").mode("append").option("userMetadata", note).save(path)
    _appended[(path, query)] = batch_id


def append_once(rows: DataFrame, path: str, batch_id: int) -> None:
    """``append``, unless the table holds the batch already (a replay after a crash)."""
    if not is_committed(rows.sparkSession, path, batch_id):
        append(rows, path, batch_id)
