"""The lifecycle as a loop: one day of the platform, the same for notebook 06 and the runner.

Notebooks 01 to 05 build the platform once; ``run_day`` then runs it for one new day:

1. land the day's events and ingest them (01's ingestion): the simulated day, or any
   lines given instead (a day of bad events, a day without any);
2. compute the feature rows of the days the raw table has and the feature table lacks, and
   of the days that late events touched, from raw's rows of those days and the stored daily
   rows of the days before, and add them (the cost follows the new data);
3. refresh the online store from the newest rows;
4. score the day with the champion (04's scoring stream, drained and stopped);
5. receive the labels of the day ``label_delay_days`` ago, as a bank learns of fraud late;
6. monitor: drift of the model's inputs and score against the champion's test rows,
   and the quality of the newly labelled day (``monitoring``);
7. decide, with a reason a person can read, whether to train a challenger;
8. if so, train it on recent labelled days, register it, and compare it with the champion
   on the latest labelled days, which neither trained on; the alias moves only for a gain
   of at least ``margin`` in PR-AUC.

A day without valid events changes no feature row, online row or alias; labels that never
arrive leave their day's quality unmeasured; a challenger that does not beat the champion
by the margin is registered and kept as the challenger, the alias stays. Each says so in
its decision.

The stages (``STAGES``) are ingest (1), features (2), online (3), scoring (4), monitoring
(5 and 6), decision (7) and retraining (8). ``run_day`` runs them in one process; the
Airflow DAG (``orchestration/``) runs each in a process of its own,
``python -m workbook.loop --stage S --day D``, with the day's report kept in between.

Every step can run again for the same day and changes nothing the second time: landing
skips a landed day, ingestion and scoring keep checkpoints, features, labels, monitoring
and decisions are merged on their keys, and a challenger is found again by its fingerprint.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from datetime import date, timedelta
from functools import cached_property, reduce
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import BooleanType, DateType, StringType, StructField, StructType

from workbook import (
    features,
    inference,
    ingest,
    lakehouse,
    lineage,
    monitoring,
    names,
    promotion,
    registry,
    simulator,
    sources,
    store,
    train,
)
from workbook.config import get_settings
from workbook.simulator import DriftScenario, SimulationConfig
from workbook.spark import interpreted, local_frame

log = logging.getLogger("workbook.loop")
MONITORED_INPUTS = (*names.NUMERIC_INPUTS, names.PREDICTION_SCORE)
DECISION_SCHEMA = StructType(
    [
        StructField(names.MONITORED_DAY, DateType(), False),
        StructField("champion_before", StringType(), False),
        StructField("retrain", BooleanType(), False),
        StructField("challenger", StringType(), True),
        StructField("champion_after", StringType(), False),
        StructField("reason", StringType(), False),
    ]
)


@dataclass(frozen=True)
class LoopSettings:
    label_delay_days: int = 3  # a day's labels arrive this many days later
    drift: DriftScenario | None = None  # the world from some day on; None: it stays as it was
    train_days: int = 14  # a challenger learns from this many labelled days...
    holdout_days: int = 3  # ...before these latest labelled days, where it meets the champion
    margin: float = 0.02  # PR-AUC a challenger must gain over the champion to take over
    psi_alert: float = monitoring.PSI_SIGNIFICANT  # a significant shift (see monitoring)
    drifting_inputs: int = 2  # this many inputs (or the score) over psi_alert call for training
    quality_drop: float = 0.25  # PR-AUC below the champion's test PR-AUC by this share, too
    retrain_every_days: int = 3  # at most one challenger in this many days: new labels first
    lost_labels: tuple[date, ...] = ()  # days whose labels never arrive (a fault to rehearse)
    reg_param: float = 0.001
    max_iter: int = 100


@dataclass
class DayReport:
    day: date
    events: dict = field(default_factory=dict)
    feature_days: list[str] = field(default_factory=list)
    online: dict = field(default_factory=dict)
    predictions: int = 0
    scored_by: str = ""  # the version that scored the day: the champion of its morning
    labels_of: str | None = None  # the day whose labels arrived
    labels_lost: str | None = None  # the day whose labels were due and never came
    drift: dict[str, float] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)
    retrain: bool = False
    challenger: str | None = None
    champion: str = ""
    reason: str = ""
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each stage

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "day": str(self.day)}, default=str)

    def summary(self) -> str:
        """The day in one line: what was scored, the strongest drift, the labels that came."""
        labels = f"labels of {self.labels_of or '-'}"
        if not self.predictions:
            return f"{self.day}: nothing scored (no valid transaction), {labels}"
        strongest = max(self.drift, key=self.drift.get)
        name = strongest.removeprefix(monitoring.PSI_PREFIX)
        return (
            f"{self.day}: {self.predictions:,} scored by version {self.scored_by}, "
            f"top PSI {name} {self.drift[strongest]:.2f}, {labels}"
        )


def world(spark: SparkSession, settings: LoopSettings) -> SimulationConfig:
    """The simulated period of 01, continued with the settings' drift scenario."""
    return replace(lakehouse.load_simulation(spark), drift=settings.drift)


def next_day(spark: SparkSession) -> date:
    """The first day the loop has not decided: so a step cut short is run again, whole.

    Before the loop's first day, the day after the last one the raw table holds.
    """
    path = lakehouse.location(names.DECISIONS_TABLE)
    if lakehouse.is_delta_table(spark, path):
        decided = spark.read.format("delta").load(path).agg(F.max(names.MONITORED_DAY))
        last = decided.first()[0]
        if last is not None:
            return last + timedelta(days=1)
    raw = lakehouse.read_table(spark, names.RAW_TABLE)
    return raw.agg(F.max(F.to_date(names.TIMESTAMP))).first()[0] + timedelta(days=1)


def loop_days(spark: SparkSession, count: int) -> list[date]:
    """The loop's ``count`` days: from its first decided day, or else from the next day.

    So a rerun (of notebook 06, of the runner) goes over the same days again.
    """
    first = None
    path = lakehouse.location(names.DECISIONS_TABLE)
    if lakehouse.is_delta_table(spark, path):
        first = spark.read.format("delta").load(path).agg(F.min(names.MONITORED_DAY)).first()[0]
    first = first or next_day(spark)
    return [first + timedelta(days=k) for k in range(count)]


def drift_day(days: list[date], drift_from_day: int) -> date | None:
    """The day of ``days`` the drift starts (``drift_from_day``: 1 for the first; 0: never)."""
    if not drift_from_day:
        return None
    if not 1 <= drift_from_day <= len(days):
        raise ValueError(
            f"drift_from_day={drift_from_day}, but the loop runs {len(days)} days: choose a day "
            f"from 1 to {len(days)} (--drift-from-day with make run), or 0 for no drift"
        )
    return days[drift_from_day - 1]


def labelled_days(days: list[date], label_delay_days: int) -> list[date]:
    """The days of ``days`` whose labels arrive within them (``label_delay_days`` later)."""
    if len(days) <= label_delay_days:
        raise ValueError(
            f"{len(days)} loop days with labels {label_delay_days} days late: no day's labels "
            "arrive within the loop, so no quality can be measured. Run more days than the "
            "delay (--loop-days and --label-delay with make run)."
        )
    return days[: len(days) - label_delay_days]


STAGES = ("ingest", "features", "online", "scoring", "monitoring", "decision", "retraining")


def run_day(
    spark: SparkSession,
    day: date,
    settings: LoopSettings | None = None,
    events: list[str] | None = None,
) -> DayReport:
    """One day of the platform (see the module's docstring): its stages in order.

    ``events``, when given, are the day's event lines instead of the simulated ones.
    """
    step = Step(spark, DayReport(day), settings or LoopSettings(), events)
    for stage in STAGES:
        run_stage(step, stage)
    return step.report


@dataclass
class Step:
    """A day's step while it runs: its report, and what its stages share in one process.

    The stages can also run one process each (the Airflow DAG): each then starts from the
    report the stages before it saved (``save`` and ``resume``), and reads the rest again.
    """

    spark: SparkSession
    report: DayReport
    settings: LoopSettings
    events: list[str] | None = None

    @cached_property
    def config(self) -> SimulationConfig:
        return world(self.spark, self.settings)

    @cached_property
    def decided(self):
        """The decision recorded for the day, if it was decided before (see ``run_stage``)."""
        return recorded_decision(self.spark, self.report.day)

    @cached_property
    def scoring_model(self) -> tuple:
        """The champion of the day's morning; a day decided before, the one it had then."""
        if self.decided is None:
            return registry.load_spark_model(self.spark, names.CHAMPION)
        return registry.load_spark_model(self.spark, version=self.decided["champion_before"])


def run_stage(step: Step, stage: str) -> None:
    """Run one stage of the step (one of ``STAGES``), timed in its report.

    A day decided before runs again with the champion it had then and keeps its decision.
    """
    if stage not in STAGES:
        raise ValueError(f"no stage {stage!r}: the stages are {', '.join(STAGES)}")
    report = step.report
    if stage == "retraining" and not (report.retrain and step.decided is None):
        return  # nothing to train: the decision said so, or was taken before
    with _timed(report, stage):
        small = rows_read(step, stage) <= INTERPRETED_ROWS
        with interpreted(step.spark) if small else nullcontext():
            _WORK[stage](step)


# A stage that reads up to this many transactions runs without generated code: compiling
# its queries would cost more than evaluating them (a day at the default size). Larger
# days (a day of 20 million transactions over 30 is 670,000) are faster compiled.
INTERPRETED_ROWS = 250_000


def rows_read(step: Step, stage: str) -> int:
    """About how many transactions ``stage`` reads: a day's, or those of the days before it
    that its features, its monitoring or a challenger need too."""
    config = step.config
    day = len(step.events) if step.events is not None else config.n_transactions // config.days
    days = {
        "features": features.NEW_MERCHANT_DAYS + 1,  # the day's, and the days its windows see
        "monitoring": 2,  # the day's, and the newly labelled day's
        "retraining": step.settings.train_days + step.settings.holdout_days,
    }
    return day * days.get(stage, 1)


def _ingest(step: Step) -> None:
    spark, report, config = step.spark, step.report, step.config
    if step.events is None:
        one_day = config.one_day(config.index_of(report.day))
        report.events = sources.publish(spark, one_day, progress=False)
    else:
        sources.send_day(spark, report.day, step.events)
        report.events = {"days": 1, "lines": len(step.events)}
    ingest.ingest_events(spark)


def _features(step: Step) -> None:
    step.report.feature_days = [str(d) for d in update_features(step.spark, step.report.day)]


def _online(step: Step) -> None:
    step.report.online = refresh_online(step.spark, step.report.day)


def _scoring(step: Step) -> None:
    model, champion = step.scoring_model
    step.report.predictions = score(step.spark, model, champion, step.report.day)
    step.report.scored_by = champion.version


def _monitoring(step: Step) -> None:
    spark, report, settings = step.spark, step.report, step.settings
    model, champion = step.scoring_model
    due = report.day - timedelta(days=settings.label_delay_days)
    if due in settings.lost_labels:
        labelled, report.labels_lost = None, str(due)
    else:
        labelled = receive_labels(spark, step.config, due)
    report.labels_of = str(labelled) if labelled else None
    report.drift, report.quality = monitor(spark, model, champion, report.day, labelled)


def _decision(step: Step) -> None:
    report, decided = step.report, step.decided
    if decided is not None:
        report.retrain, report.challenger = decided["retrain"], decided["challenger"]
        report.champion, report.reason = decided["champion_after"], decided["reason"]
        log.info("%s: %s (decided before)", report.day, report.reason)
        return
    _, champion = step.scoring_model
    report.retrain, report.reason = decide(step.spark, champion, report, step.settings)
    report.champion = champion.version
    if not report.retrain:  # else recorded once the challenger has met the champion
        record_decision(step.spark, champion.version, report)
        log.info("%s: %s", report.day, report.reason)


def _retraining(step: Step) -> None:
    report = step.report
    _, champion = step.scoring_model
    version, outcome = retrain(step.spark, step.config, report.day, step.settings, champion.version)
    report.challenger, report.champion = version, outcome.champion
    report.reason += f"; {outcome.reason}"
    record_decision(step.spark, champion.version, report)
    log.info("%s: %s", report.day, report.reason)


_WORK = {
    "ingest": _ingest,
    "features": _features,
    "online": _online,
    "scoring": _scoring,
    "monitoring": _monitoring,
    "decision": _decision,
    "retraining": _retraining,
}


def saved_report(day: date) -> Path:
    """Where a step run stage by stage keeps its report between the stages' processes."""
    return get_settings().lakehouse / "_steps" / f"{day}.json"


def resume(spark: SparkSession, day: date, settings: LoopSettings, stage: str) -> Step:
    """The step of ``day`` as the stages before ``stage`` left it (ingest starts afresh)."""
    if stage == STAGES[0]:
        return Step(spark, DayReport(day), settings)
    path = saved_report(day)
    if not path.exists():
        raise FileNotFoundError(f"no report at {path}: run the stages before {stage} for {day}")
    return Step(spark, DayReport(**{**json.loads(path.read_text()), "day": day}), settings)


def save(step: Step) -> None:
    path = saved_report(step.report.day)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(step.report.to_json())


@contextmanager
def _timed(report: DayReport, step: str):
    start = time.perf_counter()
    yield
    report.seconds[step] = round(time.perf_counter() - start, 1)


# -- 2. and 3. features, offline and online ----------------------------------------------------


# The raw table's version a features commit has taken into account, in its commit info.
COVERED = "raw_version"


def update_features(spark: SparkSession, day: date) -> list[date]:
    """Bring the feature table up to ``day``: the days after its last one, and every day the
    raw rows added since its last update touch (a late event changes its day's row and the
    rolling rows after it). Returns the days written.
    """
    path = lakehouse.location(names.FEATURES_TABLE)
    table = spark.read.format("delta").load(path)
    last = table.agg(F.max(names.TRANSACTION_DATE)).first()[0]
    raw_version = lakehouse.table_version(spark, lakehouse.location(names.RAW_TABLE))
    touched = days_added(spark, covered_raw_version(spark, path), raw_version)
    first = min([last + timedelta(days=1), *touched])
    if first > day:
        return []  # done before: a rerun of the day
    raw = lakehouse.read_table(spark, names.RAW_TABLE, raw_version)
    # Computed once (a few thousand rows a day), not again in each pass of the MERGE.
    rows = features.for_days(raw, table, first, day).localCheckpoint()
    # None when no valid transaction has come since: the table still ends where the data does.
    days = sorted(r[0] for r in rows.select(names.TRANSACTION_DATE).distinct().collect())
    if not days:
        return days
    with lakehouse.commit_note(spark, json.dumps({COVERED: raw_version})):
        if first <= last:  # days stored before change: a MERGE
            lakehouse.upsert(spark, path, rows, list(names.FEATURE_KEYS), [names.RAW_TABLE])
        else:  # new days only: new keys, so an append (one job) does what a MERGE (a dozen) would
            lakehouse.append(spark, path, rows, [names.RAW_TABLE])
    return days


def covered_raw_version(spark: SparkSession, path: str) -> int | None:
    """The raw version the feature table's newest noted commit covered; None before any."""
    from delta.tables import DeltaTable

    noted = (
        DeltaTable.forPath(spark, path)
        .history()
        .filter(F.col("userMetadata").contains(COVERED))
        .orderBy(F.col("version").desc())
        .select("userMetadata")
        .first()
    )
    return json.loads(noted[0])[COVERED] if noted else None


def days_added(spark: SparkSession, since: int | None, until: int) -> list[date]:
    """The days of the raw rows that versions ``since`` + 1 to ``until`` added.

    Raw is append-only: the files those versions' commits add hold exactly those rows, so
    only they are read. Without a ``since`` (the notebooks built the table), none: the days
    after the table's last one are computed anyway.
    """
    if since is None or since == until:
        return []
    files = lakehouse.files_added(spark, lakehouse.location(names.RAW_TABLE), since, until)
    if not files:
        return []
    days = spark.read.schema(ingest.RAW_SCHEMA).parquet(*files).select(F.to_date(names.TIMESTAMP))
    return sorted(r[0] for r in days.distinct().collect())


def refresh_online(spark: SparkSession, day: date) -> dict[str, int]:
    """Every account's row of ``day`` (the newest), upserted into the online table."""
    table = lakehouse.read_table(spark, names.FEATURES_TABLE)
    latest = table.filter(F.col(names.TRANSACTION_DATE) == F.lit(day))
    conn = store.connect()
    try:
        store.create_tables(conn)
        return store.materialize(conn, latest)
    finally:
        conn.close()


# -- 4. scoring ------------------------------------------------------------------------------


def score(spark: SparkSession, model, champion: registry.LoadedModel, day: date) -> int:
    """Drain the scoring stream with the champion; the number of predictions of ``day``."""
    predictions_path = lakehouse.location(names.PREDICTIONS_TABLE)
    inference.start_scoring(
        spark,
        model,
        champion.version,
        lakehouse.location(names.RAW_TABLE),
        lakehouse.location(names.FEATURES_TABLE),
        predictions_path,
        starting_version=train.trained_on_version(champion.metadata) + 1,
    ).awaitTermination()
    return _of_day(spark.read.format("delta").load(predictions_path), day).count()


def _of_day(frame: DataFrame, day: date) -> DataFrame:
    return frame.filter(features.on_days([day]))


# -- 5. labels, late -------------------------------------------------------------------------


def receive_labels(spark: SparkSession, config: SimulationConfig, day: date) -> date | None:
    """Merge the labels of ``day`` into the labels table; ``None`` for a day before the loop.

    The simulated period's labels came with 01, and 04's day's with 04.
    """
    if day <= config.end_date:
        return None
    _, labels = simulator.simulate(config.one_day(config.index_of(day)))
    ingest.write_labels(spark, labels, lakehouse.location(names.LABELS_TABLE))
    return day


# -- 6. monitoring ---------------------------------------------------------------------------


def inputs_of_days(spark: SparkSession, days: list[date]) -> DataFrame:
    """The transactions of ``days`` with their model inputs: only those days' rows of raw and
    the feature rows of the days before them are read."""
    raw = lakehouse.read_table(spark, names.RAW_TABLE).filter(features.on_days(days))
    history = lakehouse.read_table(spark, names.FEATURES_TABLE).filter(  # features.as_of_date
        F.col(names.TRANSACTION_DATE).isin([d - timedelta(days=1) for d in days])
    )
    return features.transaction_features(raw, history)


def monitored_rows(spark: SparkSession, days: list[date]) -> DataFrame:
    """The predictions of ``days`` with the inputs they were scored on: one row each."""
    predictions = (
        lakehouse.read_table(spark, names.PREDICTIONS_TABLE)
        .filter(features.on_days(days))
        .select(names.TRANSACTION_ID, names.PREDICTION_SCORE, names.MODEL_VERSION)
    )
    return (
        inputs_of_days(spark, days)
        .join(predictions, names.TRANSACTION_ID)
        .withColumn(names.MONITORED_DAY, F.col(names.TRANSACTION_DATE))
    )


def reference(spark: SparkSession, model, champion: registry.LoadedModel) -> monitoring.Reference:
    """The champion's test rows, binned: kept as JSON when the version is trained (or, for a
    version trained elsewhere, when first asked for), then read.

    Its test days, not all its training days: they are the latest it was measured on, and
    their rolling features have the same history behind them as the days that follow (in
    the first weeks of the data, 7- and 30-day counts are still filling up).
    """
    path = _reference_path(champion.version)
    if lakehouse.exists(spark, path):
        return monitoring.Reference.from_json(lakehouse.read_text(spark, path))
    return keep_reference(spark, champion.version, model, tested_rows(spark, champion.metadata))


def keep_reference(spark: SparkSession, version: str, model, rows: DataFrame):
    """Bin ``version``'s test ``rows`` and keep the result where ``reference`` looks."""
    found = binned(model, rows)
    lakehouse.write_text(spark, _reference_path(version), found.to_json())
    return found


def binned(model, rows: DataFrame) -> monitoring.Reference:
    """``rows`` scored by ``model``, their inputs and score binned: what drift is measured
    against."""
    return monitoring.reference(
        train.score(model, rows), MONITORED_INPUTS, names.CATEGORICAL_INPUTS
    )


def tested_rows(spark: SparkSession, metadata: dict) -> DataFrame:
    """The labelled rows a version was tested on, as its metadata records them."""
    raw, table, labels = train.read_inputs(spark, metadata["table_versions"])
    test_from = F.lit(metadata["split"]["test_from"]).cast("date")
    test_until = F.date_add(test_from, int(metadata["split"]["test_days"]) - 1)
    return train.training_set(raw, table, labels).filter(
        F.col(names.TRANSACTION_DATE).between(test_from, test_until)
    )


def _reference_path(version: str) -> str:
    return f"{lakehouse.location(names.MONITORING_REFERENCES)}/{version}.json"


def monitor(spark, model, champion: registry.LoadedModel, day: date, labelled: date | None):
    """Drift of ``day`` for the champion; quality of the ``labelled`` day for each version that
    scored it. Both are recorded in one write; returned as {metric: value} for the report.
    """
    # Both days in one read of raw, features and predictions, kept for the two uses below.
    rows = monitored_rows(spark, [day, labelled] if labelled else [day]).cache()
    of = F.col(names.MONITORED_DAY)
    drift = monitoring.drift(rows.filter(of == F.lit(day)), reference(spark, model, champion))
    measured = [monitoring.of_version(drift, champion.version)]
    if labelled is not None:
        measured += measure_quality(spark, rows.filter(of == F.lit(labelled)))
    monitoring.record_rows(spark, reduce(DataFrame.unionByName, measured))
    rows.unpersist()
    read = [names.RAW_TABLE, names.FEATURES_TABLE, names.PREDICTIONS_TABLE]
    read += [names.LABELS_TABLE] if labelled else []
    lineage.record("monitor", map(lineage.table, read), [lineage.table(names.MONITORING_TABLE)])
    return _values(drift), _values(*measured[1:])


def measure_quality(spark: SparkSession, rows: DataFrame) -> list[DataFrame]:
    """Precision, recall and PR-AUC of a newly labelled day's monitored ``rows``, per version
    that scored it."""
    labels = lakehouse.read_table(spark, names.LABELS_TABLE)
    columns = (names.MONITORED_DAY, names.MODEL_VERSION, names.PREDICTION_SCORE, names.LABEL)
    # A day is a few thousand rows: fetched once, measured per version on the driver.
    scored = rows.join(labels, names.TRANSACTION_ID).select(*columns).toPandas()
    found = []
    for version, part in scored.groupby(names.MODEL_VERSION):
        threshold = registry.version_metadata(version)["threshold"]
        results = monitoring.quality_rows(part, threshold)
        found.append(
            monitoring.of_version(local_frame(spark, results, monitoring.RESULT_SCHEMA), version)
        )
    return found


def _values(*results: DataFrame) -> dict[str, float]:
    """Monitoring results as {metric: value}, rounded for the report."""
    return {
        r[names.METRIC]: round(r[names.METRIC_VALUE], 4) for rows in results for r in rows.collect()
    }


def quality_of(spark: SparkSession, version: str, days: list[date]):
    """Precision, recall and PR-AUC that ``version`` has, or would have had, on labelled ``days``.

    The days' transactions are scored again by that version, whichever version scored them
    at the time: so a champion and its challenger are compared on the same rows. A pandas
    frame, one row per (day, metric); days without labels, or without fraud, have none.
    """
    model, loaded = registry.load_spark_model(spark, version=version)
    labelled = inputs_of_days(spark, days).join(
        lakehouse.read_table(spark, names.LABELS_TABLE), names.TRANSACTION_ID
    )
    scored = train.score(model, labelled).withColumn(
        names.MONITORED_DAY, F.col(names.TRANSACTION_DATE)
    )
    found = monitoring.quality(scored, loaded.metadata["threshold"]).toPandas()
    return found.assign(**{names.MODEL_VERSION: loaded.version})


# -- 7. the decision -------------------------------------------------------------------------


def decide(spark, champion, report: DayReport, settings: LoopSettings) -> tuple[bool, str]:
    """Train a challenger, or not, and why, in words."""
    missing = (
        f"; the labels of {report.labels_lost} have not arrived: its quality is unknown"
        if report.labels_lost
        else ""
    )
    if report.predictions == 0:
        return False, (
            f"keep version {champion.version}: no valid transaction arrived for {report.day}, "
            "nothing to monitor (refused events are in the quarantine table, each with its "
            f"reason){missing}"
        )
    drifting = sorted(
        m.removeprefix(monitoring.PSI_PREFIX)
        for m, v in report.drift.items()
        if v > settings.psi_alert
    )
    reasons = []
    if len(drifting) >= settings.drifting_inputs or names.PREDICTION_SCORE in drifting:
        reasons.append(f"significant drift (PSI > {settings.psi_alert}) of {', '.join(drifting)}")
    expected = champion.metadata["metrics"]["test"]["pr_auc"]
    floor = expected * (1 - settings.quality_drop)
    if report.quality and report.quality["pr_auc"] < floor:
        reasons.append(
            f"PR-AUC {report.quality['pr_auc']:.3f} on {report.labels_of} is below "
            f"{floor:.3f} ({settings.quality_drop:.0%} under its test PR-AUC {expected:.3f})"
        )
    if not reasons:
        shown = ", ".join(drifting) or "no input"
        moderate = sorted(
            m.removeprefix(monitoring.PSI_PREFIX)
            for m, v in report.drift.items()
            if monitoring.PSI_STABLE <= v <= settings.psi_alert
        )
        watch = f", a moderate shift of {', '.join(moderate)} to watch" if moderate else ""
        held = missing or ", quality held"
        return False, f"keep version {champion.version}: {shown} over the PSI alert{watch}{held}"
    last = _last_retrain(spark, report.day)
    if last is not None and (report.day - last).days < settings.retrain_every_days:
        return False, (
            f"keep version {champion.version} for now: {'; '.join(reasons)}; a challenger "
            f"was trained on {last}, and fewer than {settings.retrain_every_days} new days "
            f"of labels have arrived since{missing}"
        )
    return True, f"train a challenger: {'; '.join(reasons)}{missing}"


def _last_retrain(spark: SparkSession, before: date) -> date | None:
    path = lakehouse.location(names.DECISIONS_TABLE)
    if not lakehouse.is_delta_table(spark, path):
        return None
    done = (
        spark.read.format("delta")
        .load(path)
        .filter(F.col("retrain") & (F.col(names.MONITORED_DAY) < F.lit(before)))
    )
    return done.agg(F.max(names.MONITORED_DAY)).first()[0]


# -- 8. retraining and promotion -------------------------------------------------------------


def retrain(spark, config: SimulationConfig, day: date, settings: LoopSettings, champion: str):
    """Train on recent labelled days, register, and let the challenger meet the champion.

    ``(challenger version, promotion.Decision)``; no challenger when the labelled days hold
    no fraud to learn from, or none to compare on (labels that never came, days without data).
    """
    labelled_until = day - timedelta(days=settings.label_delay_days)
    test_from = labelled_until - timedelta(days=settings.holdout_days - 1)
    train_from = test_from - timedelta(days=settings.train_days)
    versions = lakehouse.table_versions(spark, train.INPUT_TABLES)
    raw, table, labels = train.read_inputs(spark, versions)
    window = F.col(names.TRANSACTION_DATE).between(F.lit(train_from), F.lit(labelled_until))
    data = train.training_set(raw, table, labels).filter(window).cache()
    train_df, holdout = train.time_split(data, test_from)
    frauds = dict(
        data.groupBy(F.col(names.TRANSACTION_DATE) >= F.lit(test_from))
        .agg(F.sum(names.LABEL))
        .collect()
    )
    if not (frauds.get(False) and frauds.get(True)):
        data.unpersist()
        lacking = f"to compare on from {test_from}" if frauds.get(False) else "to learn from"
        reason = (
            f"none could be trained: the labelled days {train_from} to {labelled_until} "
            f"hold no fraud {lacking}"
        )
        return None, promotion.Decision(False, champion, reason)
    pipeline = train.build_pipeline(reg_param=settings.reg_param, max_iter=settings.max_iter)
    model = train.fit(pipeline, train_df)
    evaluation = train.evaluate(
        train.scores_and_labels(train.score(model, train_df), names.AMOUNT),
        train.scores_and_labels(train.score(model, holdout), names.AMOUNT),
    )
    train.set_threshold(model, evaluation.threshold)
    metadata = train.model_metadata(config, versions, test_from, settings.holdout_days, evaluation)
    metadata["split"]["train_from"] = str(train_from)
    parameters = train.run_parameters(
        config, settings.reg_param, settings.max_iter, settings.holdout_days
    ) | {"train_from": str(train_from), "trained_on_day": str(day)}
    example = holdout.select(*names.NUMERIC_INPUTS, *names.CATEGORICAL_INPUTS).limit(5)
    run = registry.log_training_run(
        spark, model, parameters=parameters, metadata=metadata, input_example=example.toPandas()
    )
    version, _ = registry.register(run)
    registry.set_alias(names.CHALLENGER, version.version)
    # Binned now, while its test rows are in memory; a rerun of the day keeps the first.
    if not lakehouse.exists(spark, _reference_path(version.version)):
        keep_reference(spark, str(version.version), model, holdout)
    outcome = promotion.consider(
        spark, version, evaluation.model["pr_auc"], holdout, margin=settings.margin
    )
    data.unpersist()
    return str(version.version), outcome


def recorded_decision(spark: SparkSession, day: date):
    """The decision recorded for ``day``, if the day was decided before."""
    path = lakehouse.location(names.DECISIONS_TABLE)
    if not lakehouse.is_delta_table(spark, path):
        return None
    rows = spark.read.format("delta").load(path).filter(F.col(names.MONITORED_DAY) == F.lit(day))
    return rows.first()


def record_decision(spark: SparkSession, champion_before: str, report: DayReport) -> None:
    """One row per day: what the loop decided and why."""
    path = lakehouse.location(names.DECISIONS_TABLE)
    lakehouse.ensure_table(spark, path, DECISION_SCHEMA)
    row = (
        report.day,
        str(champion_before),
        report.retrain,
        report.challenger,
        str(report.champion),
        report.reason,
    )
    rows = local_frame(spark, [row], DECISION_SCHEMA)
    lakehouse.merge_new_rows(spark, path, rows, [names.MONITORED_DAY])
    read = [lineage.table(names.MONITORING_TABLE), registry.as_dataset(champion_before)]
    lineage.record("decide", read, [lineage.at(path)])


def main(argv=None) -> int:
    import argparse

    from workbook.spark import get_spark

    parser = argparse.ArgumentParser(description="Run the platform for some days (notebook 06).")
    parser.add_argument(
        "--days", type=int, default=1, help="days to run, from the first day not yet decided"
    )
    parser.add_argument("--label-delay", type=int, default=LoopSettings.label_delay_days)
    parser.add_argument("--drift-from", type=date.fromisoformat, help="the drift's first day")
    parser.add_argument(
        "--stage",
        choices=STAGES,
        help="run this stage of --day only, after the stages before it (as the Airflow DAG "
        "does); prints the day's report so far as JSON",
    )
    parser.add_argument("--day", type=date.fromisoformat, help="the day of --stage")
    args = parser.parse_args(argv)
    if args.stage and not args.day:
        parser.error("--stage needs --day")
    from workbook.run import local_postgres_stopped_at_the_end

    # A stage alone is a short job, but for training, which runs long enough to be compiled.
    spark = get_spark("06_monitor_retrain", short_lived=args.stage not in (None, "retraining"))
    config = lakehouse.load_simulation(spark)
    drift = DriftScenario(config.index_of(args.drift_from)) if args.drift_from else None
    settings = LoopSettings(label_delay_days=args.label_delay, drift=drift)
    with local_postgres_stopped_at_the_end():  # as the runner: one this command started
        if args.stage:
            step = resume(spark, args.day, settings, args.stage)
            run_stage(step, args.stage)
            save(step)
            print(step.report.to_json(), flush=True)
        else:
            for _ in range(args.days):
                print(run_day(spark, next_day(spark), settings).to_json(), flush=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
