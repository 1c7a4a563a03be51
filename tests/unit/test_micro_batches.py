"""Exactly-once appends of micro-batches, from the notes on the commits."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from workbook import lakehouse, micro_batches

pytestmark = pytest.mark.spark


@contextmanager
def in_query(spark, query: str):
    """As inside ``foreachBatch`` of the streaming query ``query``."""
    spark.sparkContext.setLocalProperty("sql.streaming.queryId", query)
    try:
        yield
    finally:
        spark.sparkContext.setLocalProperty("sql.streaming.queryId", None)


def test_the_last_committed_batch_is_read_from_the_newest_note_of_its_query(spark, tmp_path):
    path = str(tmp_path / "predictions")
    rows = spark.range(3)
    assert micro_batches.last_committed(spark, path, "q1") is None  # no table yet

    def append(note: str | None) -> None:
        writer = rows.write.format("delta").mode("append")
        writer = writer.option("userMetadata", note) if note else writer
        writer.save(path)

    append(f"{micro_batches.NOTE}q1 4")
    append(f"{micro_batches.NOTE}q1 5")
    append(None)  # another writer's commit, without a note
    append(f"{micro_batches.NOTE}q2 0")  # a fresh checkpoint's query
    assert micro_batches.last_committed(spark, path, "q1") == 5
    assert micro_batches.last_committed(spark, path, "q2") == 0
    assert micro_batches.last_committed(spark, path, "q3") is None


def test_a_replayed_batch_is_appended_once(spark, tmp_path):
    path = str(tmp_path / "table")
    rows = spark.range(3)
    with in_query(spark, "q1"):
        for batch_id in (0, 1, 1, 0, 2):  # 1 and 0 again: replays after a crash
            micro_batches.append_once(rows, path, batch_id)
    with in_query(spark, "q2"):  # a fresh checkpoint: its batches are new
        micro_batches.append_once(rows, path, 0)
    assert spark.read.format("delta").load(path).count() == 4 * 3
    assert lakehouse.table_version(spark, path) == 3


def test_an_append_outside_a_streaming_query_is_refused(spark, tmp_path):
    with pytest.raises(RuntimeError, match="foreachBatch"):
        micro_batches.append_once(spark.range(1), str(tmp_path / "table"), 0)
