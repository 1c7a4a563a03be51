"""A lakehouse's rows as multisets, to compare two runs table by table (the reliability
suite's reruns, the orchestration suite's DAG against the loop)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from workbook import store

# Set by each run to the time it ran; everything else must be equal.
VOLATILE = {"inference_timestamp"}


def as_multiset(rows) -> Counter:
    return Counter(
        repr(sorted((k, v) for k, v in row.items() if k not in VOLATILE)) for row in rows
    )


def delta_tables(root: Path) -> dict[str, str]:
    """Every Delta table of the lakehouse at ``root`` (checkpoints' state stores aside)."""
    return {
        str(log.parent.relative_to(root)): str(log.parent)
        for log in root.glob("*/**/_delta_log")
        if "_checkpoint" not in log.parts
    }


def table_rows(spark, path: str, version: int | None = None) -> Counter:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return as_multiset(r.asDict() for r in reader.load(path).collect())


def online_rows(root: Path, monkeypatch) -> Counter:
    monkeypatch.setenv("WORKBOOK_LAKEHOUSE", str(root))  # its embedded PostgreSQL
    conn = store.connect()
    try:
        return as_multiset(store.read_all().to_dict("records"))
    finally:
        conn.close()
