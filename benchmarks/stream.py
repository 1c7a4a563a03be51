"""Streaming inference: from an event landing in the raw table to its prediction row.

The workbook's scoring query (``inference.start_scoring``) runs with a processing-time
trigger over a raw table of its own, while a producer thread appends events to that table
at a steady rate (with delta-rs, as an outside writer would). An event has landed when its
append is committed; its prediction exists when the predictions table's commit that holds
it is written. Latency is the difference, per event, measured after a warm-up: on two
cores the JIT compiles Spark's and Delta's hot paths for about a minute, and a scoring
query runs for much longer than that. A second phase lands a backlog at once and times how
fast the query drains it: the sustained events per second.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks import common
from benchmarks.features import raw_arrow_schema
from workbook import lakehouse, micro_batches, names, registry, simulator
from workbook.names import BATCH_ID

TARGET_P50_MS = 1000.0
TARGET_P95_MS = 2000.0


@dataclass
class Append:
    tag: str  # the transaction_id prefix of this append's events
    events: int
    landed_at: float  # when its commit became visible to readers
    write_s: float


@dataclass
class Producer:
    """Appends slices of an event pool to the raw table, each with fresh transaction ids."""

    raw_path: Path
    pool: pa.Table
    appends: list[Append] = field(default_factory=list)
    version: int = 0  # the raw table's latest commit
    _offset: int = 0

    def append(self, tag: str, n: int) -> Append:
        from deltalake import write_deltalake

        index = (self._offset + np.arange(n)) % self.pool.num_rows
        self._offset = int((self._offset + n) % self.pool.num_rows)
        batch = self.pool.take(pa.array(index))
        ids = pa.array([f"{tag}-{i:06d}" for i in range(n)])
        batch = batch.set_column(0, pa.field(names.TRANSACTION_ID, pa.string(), False), ids)
        start = time.perf_counter()
        write_deltalake(self.raw_path, batch, mode="append")
        write_s = time.perf_counter() - start
        self.version += 1  # the only writer: each append is the next commit
        # Landed when its commit file appeared, as for the predictions' commits below; the
        # call returns later, after delta-rs's post-commit work (checkpoints, log cleanup).
        commit = self.raw_path / "_delta_log" / f"{self.version:020d}.json"
        record = Append(tag, n, commit.stat().st_mtime, write_s)
        self.appends.append(record)
        return record

    def steady(self, phase: str, rate: float, seconds: float, every: float) -> list[Append]:
        """Append ``rate * every`` events in each slot of ``every`` seconds, at a random moment
        of it: on a fixed schedule every append would land at the same phase of the query's
        trigger, and that phase, new in each run, would set the median wait for a trigger."""
        per_append = max(1, round(rate * every))
        count = max(1, round(seconds / every))
        moments = random.Random(phase).random
        start = time.monotonic()
        out = []
        for k in range(count):
            delay = start + (k + moments()) * every - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            out.append(self.append(f"{phase}{k:05d}", per_append))
        return out


class CommitLog:
    """Reads a Delta table's commits as they appear: when each was written, which files it added."""

    def __init__(self, table: Path):
        self.log_dir = table / "_delta_log"
        self.commits: dict[int, dict] = {}

    def refresh(self) -> None:
        for path in sorted(self.log_dir.glob("*.json")):
            version = int(path.stem)
            if version in self.commits:
                continue
            files, rows = [], 0
            for line in path.read_text().splitlines():
                action = json.loads(line)
                if "add" in action:
                    files.append(unquote(action["add"]["path"]))
                    rows += json.loads(action["add"].get("stats") or "{}").get("numRecords", 0)
            # The commit file appears by an atomic rename: its time is when readers can see it.
            self.commits[version] = {"at": path.stat().st_mtime, "files": files, "rows": rows}

    @property
    def rows(self) -> int:
        return sum(c["rows"] for c in self.commits.values())


def event_pool(config: simulator.SimulationConfig, size: int) -> pa.Table:
    """Valid events of the day after the trained period: every account has yesterday's row."""
    day = replace(config.following_days(1), n_transactions=size)
    frame, _labels = simulator.simulate(day)
    frame[names.TIMESTAMP] = pd.to_datetime(frame[names.TIMESTAMP], utc=True)
    frame[BATCH_ID] = 0
    return pa.Table.from_pandas(frame, raw_arrow_schema(), preserve_index=False)


def wait_for_rows(log: CommitLog, rows: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log.refresh()
        if log.rows >= rows:
            return True
        time.sleep(0.05)
    return False


def latencies_ms(predictions: Path, log: CommitLog, appends: list[Append]) -> np.ndarray:
    """Per event of ``appends``: its prediction's commit time minus its landing time."""
    landed = {a.tag: a.landed_at for a in appends}
    out = []
    for commit in log.commits.values():
        for file in commit["files"]:
            ids = pq.read_table(predictions / file, columns=[names.TRANSACTION_ID]).column(0)
            tags = pd.Series(ids.to_pylist()).str.split("-", n=1).str[0]
            at = tags.map(landed).dropna()
            out.extend((commit["at"] - at.to_numpy()) * 1000)
    return np.asarray(out)


def batch_durations(query, since_ms: float) -> dict:
    """Median per micro-batch phase (ms) over the batches that read events, after ``since_ms``."""
    rows = [
        p
        for p in query.recentProgress
        if p["numInputRows"] > 0 and pd.Timestamp(p["timestamp"]).timestamp() * 1000 >= since_ms
    ]
    if not rows:
        return {}
    phases = rows[0]["durationMs"].keys()
    return {
        "batches": len(rows),
        "median_input_rows": float(np.median([p["numInputRows"] for p in rows])),
        **{k: float(np.median([p["durationMs"].get(k, 0) for p in rows])) for k in phases},
    }


def run(
    spark,
    trigger: str = "1 second",
    rate: float = 1000.0,
    seconds: float = 60.0,
    every: float = 0.5,
    warmup_seconds: float = 60.0,
    backlog: int = 500_000,
    backlog_appends: int = 20,
    pool_size: int = 100_000,
    floor_seconds: float = 30.0,
) -> dict:
    from workbook import inference

    config = simulator.SimulationConfig.from_json(
        Path(lakehouse.location(names.SIMULATION_MANIFEST)).read_text()
    )
    work = common.WORK_DIR / "stream"
    raw_path, predictions_path = work / "raw", work / "predictions"
    shutil.rmtree(work, ignore_errors=True)
    common.progress(f"stream: simulating a pool of {pool_size:,} events for the next day")
    producer = Producer(raw_path, event_pool(config, pool_size))
    from deltalake import DeltaTable

    # A checkpoint each 10 commits, as Spark writes its tables (delta-rs's default is 100): a
    # reader of a new version replays the commits since the last checkpoint.
    DeltaTable.create(
        raw_path, producer.pool.schema, configuration={"delta.checkpointInterval": "10"}
    )

    model, champion = registry.load_spark_model(spark, names.CHAMPION)
    query = inference.start_scoring(
        spark,
        model,
        champion.version,
        str(raw_path),
        lakehouse.location(names.FEATURES_TABLE),
        str(predictions_path),
        starting_version=0,
        processing_time=trigger,
    )
    log = CommitLog(predictions_path)
    try:
        while not query.recentProgress:  # the first (empty) trigger has run
            time.sleep(0.1)
        common.progress(f"stream: warm-up, {warmup_seconds:.0f} s at {rate:,.0f} events/s")
        warmup = producer.steady("W", rate, warmup_seconds, every)
        wait_for_rows(log, sum(a.events for a in warmup), 120)

        common.progress(f"stream: steady phase, {seconds:.0f} s at {rate:,.0f} events/s")
        steady_from_ms = time.time() * 1000
        steady = producer.steady("S", rate, seconds, every)
        expected = sum(a.events for a in warmup + steady)
        if not wait_for_rows(log, expected, 120):
            raise TimeoutError(f"stream: {log.rows:,} of {expected:,} events scored after 120 s")
        latency = latencies_ms(predictions_path, log, steady)
        durations = batch_durations(query, steady_from_ms)
        held = sum(a.events for a in steady) / (steady[-1].landed_at - steady[0].landed_at + every)

        common.progress(f"stream: backlog phase, {backlog:,} events in {backlog_appends} appends")
        first_version = max(log.commits) + 1
        burst = [
            producer.append(f"B{k:05d}", backlog // backlog_appends) for k in range(backlog_appends)
        ]
        expected += sum(a.events for a in burst)
        if not wait_for_rows(log, expected, 600):
            raise TimeoutError(f"stream: backlog not drained: {log.rows:,} of {expected:,}")
        drained_at = max(c["at"] for v, c in log.commits.items() if v >= first_version)
        drain_s = drained_at - burst[0].landed_at
        events_per_s = sum(a.events for a in burst) / drain_s
        backlog_batches = sum(1 for v in log.commits if v >= first_version)
    finally:
        query.stop()
    # Alone, as the scoring query was: on two cores, two queries slow each other down.
    floor = spark_floor(spark, producer, work / "floor", trigger, rate, floor_seconds, every)
    append_floor = spark_floor(
        spark, producer, work / "append", trigger, rate, floor_seconds, every, copy=True
    )

    figures = common.percentiles(latency, (50, 95, 99))
    section = {
        "headline": {
            "stream_latency_p50_ms": figures["p50_ms"],
            "stream_latency_p95_ms": figures["p95_ms"],
            "stream_events_per_s": round(events_per_s),
        },
        "latency": figures,
        "latency_ms_sample": [round(x, 1) for x in latency[:: max(1, len(latency) // 2000)]],
        "steady_rate_events_per_s": round(held, 1),
        "backlog": {
            "events": sum(a.events for a in burst),
            "seconds_to_drain": round(drain_s, 2),
            "prediction_commits": backlog_batches,
            "landing_seconds": round(burst[-1].landed_at - burst[0].landed_at, 2),
        },
        "median_batch_ms": durations,
        "floor_median_batch_ms": floor,
        "append_floor_median_batch_ms": append_floor,
        "append_write_ms_p50": round(float(np.median([a.write_s for a in steady])) * 1000, 1),
        "conditions": {
            "trigger": f"processingTime {trigger}",
            "rate_events_per_s": rate,
            "append_every_s": every,
            "steady_seconds": seconds,
            "warmup_seconds": warmup_seconds,
            "features_table_rows": int(
                spark.read.format("delta").load(lakehouse.location(names.FEATURES_TABLE)).count()
            ),
            "landing": "delta-rs append commit to the raw table (time just after the commit)",
            "prediction": "the predictions table's commit file holding the row (its mtime)",
        },
    }
    common.show("stream latency p50", figures["p50_ms"], "ms", ("<=", TARGET_P50_MS))
    common.show("stream latency p95", figures["p95_ms"], "ms", ("<=", TARGET_P95_MS))
    common.show("stream micro-batch (median)", durations["triggerExecution"], "ms")
    common.show("Spark's floor: a batch that writes nothing", floor["triggerExecution"], "ms")
    common.show("a batch that appends its rows unchanged", append_floor["triggerExecution"], "ms")
    common.show("... its events' latency p50", append_floor["latency"]["p50_ms"], "ms")
    common.show("stream steady feed rate", held, "events/s")
    common.show("stream sustained (backlog drain)", events_per_s, "events/s")
    return section


def copy_batch(path: str, batch, batch_id: int) -> None:
    """The scoring batch without the scoring: the rows as they are, appended exactly once."""
    if not micro_batches.is_committed(batch.sparkSession, path, batch_id):
        micro_batches.append(batch.coalesce(1), path, batch_id)


def spark_floor(spark, producer, folder, trigger, rate, seconds, every, copy=False) -> dict:
    """Median phases of micro-batches that read the same appends and write nothing, or, with
    ``copy``, append them unchanged to a Delta table as the scoring query does (its latencies
    too): what any query over this source pays per batch on this machine, and what any query
    that writes a Delta table does."""
    kind = "appends the rows to a table" if copy else "writes nothing"
    common.progress(f"stream: Spark's floor, {seconds:.0f} s into a sink that {kind}")
    stream = (
        spark.readStream.format("delta")
        .option("startingVersion", "latest")  # only the appends to come
        .load(str(producer.raw_path))
        .writeStream.option("checkpointLocation", str(folder / "_checkpoint"))
        .trigger(processingTime=trigger)
    )
    table = folder / "table"
    query = (
        stream.foreachBatch(partial(copy_batch, str(table))) if copy else stream.format("noop")
    ).start()
    try:
        while not query.recentProgress:  # started: its first (empty) trigger has run
            if query.exception():
                raise RuntimeError(f"stream: the floor's query failed: {query.exception()}")
            time.sleep(0.1)
        since_ms = time.time() * 1000
        appends = producer.steady("C" if copy else "F", rate, seconds, every)
        time.sleep(2)  # the last append's batch
        durations = batch_durations(query, since_ms)
    finally:
        query.stop()
    if query.exception():
        raise RuntimeError(f"stream: the floor's query failed: {query.exception()}")
    if copy:
        log = CommitLog(table)
        log.refresh()
        latency = latencies_ms(table, log, appends)
        if not latency.size:
            raise RuntimeError(f"stream: the floor's query appended none of its events to {table}")
        durations["latency"] = common.percentiles(latency, (50, 95))
    return durations


def plot(section: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    values = np.sort(np.asarray(section["latency_ms_sample"]))
    fig, (hist, cdf) = plt.subplots(1, 2, figsize=(11, 4))
    hist.hist(values, bins=50, color="tab:purple")
    hist.set(title="Event landed -> prediction committed", xlabel="ms", ylabel="events (sample)")
    cdf.plot(values, np.linspace(0, 1, len(values)), color="tab:purple")
    for p in (50, 95):
        v = section["latency"][f"p{p}_ms"]
        cdf.axvline(v, color="grey", linestyle="--")
        cdf.annotate(f"p{p} {v:.0f} ms", (v, p / 100), xytext=(5, -12), textcoords="offset points")
    cdf.set(
        title=f"Latency CDF ({section['conditions']['trigger']}, "
        f"{section['conditions']['rate_events_per_s']:.0f} events/s)",
        xlabel="ms",
        ylabel="share of events",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
