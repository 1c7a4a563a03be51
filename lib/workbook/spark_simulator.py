"""The simulator run by Spark: each day made by an executor, in parallel, never on the driver.

Every day is generated from ``(seed, day)`` by ``simulator``'s own functions, so a day made
here is the pandas simulator's day row for row; only where it runs differs. A task makes
a few consecutive days and sends their events itself (``sources`` says where: the landing
zone locally, the Kafka topic on the stack). The driver sees one summary row per day, so
neither it nor the notebook's kernel holds the transactions, at any size.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Collection
from datetime import date

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T
from tqdm import tqdm

from workbook import names, simulator
from workbook.simulator import SimulationConfig

TRANSACTIONS_SCHEMA = T.StructType(
    [
        T.StructField(names.TRANSACTION_ID, T.StringType(), False),
        T.StructField(names.TIMESTAMP, T.StringType(), False),
        T.StructField(names.ACCOUNT_ID, T.StringType(), False),
        T.StructField(names.AMOUNT, T.DoubleType(), False),
        T.StructField(names.CURRENCY, T.StringType(), False),
        T.StructField(names.TRANSACTION_TYPE, T.StringType(), False),
        T.StructField(names.MERCHANT_ID, T.StringType(), False),
        T.StructField(names.CATEGORY, T.StringType(), False),
        T.StructField(names.IS_FLAGGED, T.BooleanType(), False),
        T.StructField(names.LABEL, T.IntegerType(), False),
    ]
)
SENT_SCHEMA = T.StructType(
    [
        T.StructField("day", T.DateType(), False),
        T.StructField("valid_events", T.LongType(), False),
        T.StructField("malformed_events", T.LongType(), False),
        T.StructField("sent", T.BooleanType(), False),
    ]
)
ROWS_PER_BATCH = 100_000  # what a task hands Spark at a time: its memory stays bounded


def transactions(spark: SparkSession, config: SimulationConfig) -> DataFrame:
    """The valid transactions of ``config`` with their ``label``, in the pandas simulator's
    order. Lazy: each action makes the days again (they are the same)."""

    def make(batches):
        for day_index, n in _each_day(config, batches):
            frame = simulator.simulate_day(config, _accounts(config), day_index, n)
            frame = frame.astype({names.LABEL: "int32"})[TRANSACTIONS_SCHEMA.fieldNames()]
            for start in range(0, len(frame), ROWS_PER_BATCH):
                yield frame.iloc[start : start + ROWS_PER_BATCH]

    return _days(spark, config).mapInPandas(make, TRANSACTIONS_SCHEMA)


def send_days(
    spark: SparkSession,
    config: SimulationConfig,
    send: Callable[[date, list[str]], None],
    skip: Collection[date] = (),
    progress: bool = True,
) -> pd.DataFrame:
    """Make each day's events (valid and malformed, in arrival order) on an executor, which
    calls ``send(day, lines)`` with them; the days in ``skip`` are made but not sent.

    Returns a row per day: its date, valid and malformed events, and whether it was sent.
    """

    def make_and_send(batches):
        for day_index, n in _each_day(config, batches):
            day = config.day(day_index)
            lines, n_valid, kinds = simulator.day_events(config, _accounts(config), day_index, n)
            if day not in skip:
                send(day, lines)
            row = {"day": day, "valid_events": n_valid, "malformed_events": len(kinds)}
            yield pd.DataFrame([{**row, "sent": day not in skip}])

    days = _days(spark, config)
    sent = days.mapInPandas(make_and_send, SENT_SCHEMA)
    tasks, desc = days.rdd.getNumPartitions(), f"{config.days} days published"
    rows = _collect_with_progress(spark, sent, tasks, desc, progress)
    return pd.DataFrame(rows, columns=SENT_SCHEMA.fieldNames()).sort_values("day")


def _days(spark: SparkSession, config: SimulationConfig) -> DataFrame:
    """The range's day indexes, consecutive days to a partition, as many partitions as Spark's
    default parallelism: a task costs about a tenth of a second beyond its days, which is
    more than a small day takes to make."""
    first, partitions = config.first_day, min(config.days, spark.sparkContext.defaultParallelism)
    return spark.range(first, first + config.days, numPartitions=partitions)


def _each_day(config: SimulationConfig, batches):
    """The (day index, valid transactions before fraud) of the days in a task's batches."""
    counts = dict(simulator.day_plan(config))
    for batch in batches:
        for day_index in batch["id"]:
            yield int(day_index), counts[int(day_index)]


@functools.lru_cache(maxsize=1)
def _accounts(config: SimulationConfig) -> simulator.Accounts:
    """The accounts, made once per Python worker (Spark reuses workers between tasks)."""
    return simulator.make_accounts(config)


def _collect_with_progress(
    spark: SparkSession, frame: DataFrame, tasks: int, desc: str, show: bool = True
):
    """``frame.collect()``, with a bar of the tasks Spark has completed meanwhile."""
    from pyspark import InheritableThread
    from pyspark.errors import PythonException

    context = spark.sparkContext
    group = f"{desc}-{time.monotonic_ns()}"
    outcome: dict = {}

    def collect() -> None:
        context.setJobGroup(group, desc)
        try:
            outcome["rows"] = frame.collect()
        except BaseException as error:  # raised again on the caller's thread
            outcome["error"] = error

    worker = InheritableThread(target=collect, daemon=True)
    with tqdm(total=tasks, desc=desc, unit="task", mininterval=1, disable=not show) as bar:
        worker.start()
        while worker.is_alive():
            worker.join(0.5)
            bar.update(min(tasks, _completed_tasks(context, group)) - bar.n)
        bar.update(tasks - bar.n if "rows" in outcome else 0)
    error = outcome.get("error")
    if isinstance(error, PythonException):  # an executor's: its traceback's last line says why
        why = [line.strip() for line in str(error).splitlines() if line.strip()][-1]
        raise RuntimeError(f"{desc}: a task failed: {why}") from error
    if error is not None:
        raise error
    return outcome["rows"]


def _completed_tasks(context, group: str) -> int:
    tracker = context.statusTracker()
    done = 0
    for job in tracker.getJobIdsForGroup(group):
        info = tracker.getJobInfo(job)
        for stage in info.stageIds if info else ():
            stage_info = tracker.getStageInfo(stage)
            done += stage_info.numCompletedTasks if stage_info else 0
    return done
