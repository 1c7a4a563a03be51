"""Monitoring in Spark over Delta: drift of the model's inputs and score, quality when labelled.

Drift is the population stability index (PSI) of a column on one day against a reference
(the champion's test rows): PSI = sum over bins of (day share - reference share) times
ln(day share / reference share). The bins come from the reference: its deciles for a numeric
column (edges by ``approxQuantile``; repeated edges merge, so a mostly-zero count gets fewer
bins, and missing values have a bin of their own), its values for a categorical one. A share
of zero is floored at ``SHARE_FLOOR`` so that a bin the day leaves empty, or a category the
reference never saw, counts as a large shift instead of an infinite one.

The usual reading of PSI, which notebook 06 states as its thresholds: under 0.1 the
distribution is stable, 0.1 to 0.25 is a moderate shift worth watching, over 0.25 a
significant one. Quality (precision and recall at the model's threshold, PR-AUC) needs
labels, so it is measured only on days whose labels have arrived.

Every result is a row (day, model version, metric, value) of one Delta table, merged on its
first three columns: monitoring a day again replaces its rows instead of adding to them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DateType, DoubleType, StringType, StructField, StructType

from workbook import lakehouse, metrics, names
from workbook.spark import local_frame

SHARE_FLOOR = 1e-4
BINS = 10
QUANTILE_ROWS = 500_000  # a reference's edges come from at most about this many rows
PSI_STABLE, PSI_SIGNIFICANT = 0.1, 0.25
MISSING_BIN = "missing"
PSI_PREFIX = "psi:"  # a drift metric's name: psi:<column>
QUALITY_METRICS = ("precision", "recall", "pr_auc")

KEYS = (names.MONITORED_DAY, names.MODEL_VERSION, names.METRIC)
SCHEMA = StructType(
    [
        StructField(names.MONITORED_DAY, DateType(), False),
        StructField(names.MODEL_VERSION, StringType(), False),
        StructField(names.METRIC, StringType(), False),
        StructField(names.METRIC_VALUE, DoubleType(), True),
    ]
)
# What drift and quality return, before a model version is attached: (day, metric, value).
RESULT_SCHEMA = StructType([f for f in SCHEMA.fields if f.name != names.MODEL_VERSION])


@dataclass(frozen=True)
class Reference:
    """The reference's bins and their shares: small, so it is kept on the driver."""

    edges: dict[str, list[float]]  # numeric column: the inner bin edges, ascending
    categorical: tuple[str, ...]
    shares: dict[tuple[str, str], float]  # (column, bin): the reference's share

    def columns(self) -> tuple[str, ...]:
        return (*self.edges, *self.categorical)

    def to_json(self) -> str:
        shares = [[c, b, s] for (c, b), s in sorted(self.shares.items())]
        return json.dumps(
            {"edges": self.edges, "categorical": self.categorical, "shares": shares}, indent=1
        )

    @classmethod
    def from_json(cls, text: str) -> Reference:
        fields = json.loads(text)
        shares = {(c, b): s for c, b, s in fields["shares"]}
        return cls(fields["edges"], tuple(fields["categorical"]), shares)


def reference(frame: DataFrame, numeric, categorical=(), bins: int = BINS) -> Reference:
    """Bin edges from ``frame``'s quantiles, and ``frame``'s own share of each bin."""
    numeric, categorical = tuple(numeric), tuple(categorical)
    probabilities = [k / bins for k in range(1, bins)]
    # Exact (relative error 0): an approximate quantile depends on how the rows are
    # partitioned, and the same rows must give the same edges wherever they are binned.
    # Exact quantiles keep every value in the driver's memory, so beyond QUANTILE_ROWS they
    # come from a sample that depends on the rows alone (a hash of each row's values).
    sample = _quantile_sample(frame) if numeric else frame
    quantiles = sample.approxQuantile(list(numeric), probabilities, 0.0) if numeric else []
    edges = {c: sorted(set(q)) for c, q in zip(numeric, quantiles, strict=True)}
    empty = Reference(edges, categorical, {})
    counts = _bin_counts(_binned(frame.withColumn(names.MONITORED_DAY, F.lit(None)), empty))
    totals: dict[str, int] = {}
    rows = counts.collect()
    for row in rows:
        totals[row["column"]] = totals.get(row["column"], 0) + row["count"]
    shares = {(r["column"], r["bin"]): r["count"] / totals[r["column"]] for r in rows}
    return Reference(edges, categorical, shares)


def _quantile_sample(frame: DataFrame) -> DataFrame:
    """About ``QUANTILE_ROWS`` of ``frame``'s rows, chosen by a hash of their values, or all."""
    rows = frame.count()
    if rows <= QUANTILE_ROWS:
        return frame
    every = math.ceil(rows / QUANTILE_ROWS)
    return frame.filter(F.pmod(F.xxhash64(*[F.col(c) for c in frame.columns]), F.lit(every)) == 0)


def _bin_of(column: str, edges: list[float]):
    """A numeric value's bin, as text: how many edges lie below it, or ``missing``.

    Bins are closed on the right, so a value equal to an edge stays below it: a count that
    is mostly zero has its zeros in one bin and everything above zero in the next.
    """
    value = F.col(column).cast("double")
    reached = sum((F.when(value > edge, 1).otherwise(0) for edge in edges), F.lit(0))
    return F.when(value.isNull() | F.isnan(value), F.lit(MISSING_BIN)).otherwise(
        reached.cast("string")
    )


def _binned(frame: DataFrame, ref: Reference) -> DataFrame:
    """One row per (row of ``frame``, monitored column): day, column, bin."""
    pairs = [
        F.struct(F.lit(c).alias("column"), _bin_of(c, edges).alias("bin"))
        for c, edges in ref.edges.items()
    ] + [
        F.struct(F.lit(c).alias("column"), F.coalesce(F.col(c), F.lit(MISSING_BIN)).alias("bin"))
        for c in ref.categorical
    ]
    return frame.select(names.MONITORED_DAY, F.explode(F.array(*pairs)).alias("pair")).select(
        names.MONITORED_DAY, "pair.column", "pair.bin"
    )


def _bin_counts(binned: DataFrame) -> DataFrame:
    return binned.groupBy(names.MONITORED_DAY, "column", "bin").count()


def drift(frame: DataFrame, ref: Reference) -> DataFrame:
    """PSI of each of ``ref``'s columns on each day of ``frame``: (day, metric, value).

    ``frame`` has a ``monitored_day`` column and the reference's columns. Spark bins and
    counts the rows; the PSI sums run on the driver over those counts (a few hundred), and
    the result is a small DataFrame that later uses do not compute again.
    """
    counts: dict[tuple, dict[str, int]] = {}
    for row in _bin_counts(_binned(frame, ref)).collect():
        counts.setdefault((row[names.MONITORED_DAY], row["column"]), {})[row["bin"]] = row["count"]
    rows = []
    for (day, column), observed in sorted(counts.items()):
        total = sum(observed.values())
        # Every reference bin, so a bin the day leaves empty counts too, and every bin the
        # day has, so a value the reference never saw counts as well.
        bins = {b for c, b in ref.shares if c == column} | set(observed)
        psi = 0.0
        for b in sorted(bins):  # one order, so the same counts give the same bits
            actual = max(observed.get(b, 0) / total, SHARE_FLOOR)
            wanted = max(ref.shares.get((column, b), 0.0), SHARE_FLOOR)
            psi += (actual - wanted) * math.log(actual / wanted)
        rows.append((day, PSI_PREFIX + column, psi))
    return local_frame(frame.sparkSession, rows, RESULT_SCHEMA)


def quality(scored: DataFrame, threshold: float) -> DataFrame:
    """Precision, recall (at ``threshold``) and PR-AUC of each labelled day of ``scored``.

    A day with one class only (no fraud at all) has no rows: those measures are undefined.

    ``scored`` has ``monitored_day``, the score and the label. A day's scores are a few
    thousand numbers, so PR-AUC is computed on the driver with the workbook's metrics.
    """
    by_day = scored.select(names.MONITORED_DAY, names.PREDICTION_SCORE, names.LABEL).toPandas()
    return local_frame(scored.sparkSession, quality_rows(by_day, threshold), RESULT_SCHEMA)


def quality_rows(by_day, threshold: float) -> list[tuple]:
    """``quality``'s rows (day, metric, value) from a pandas frame of the same columns."""
    rows = []
    for day, part in sorted(by_day.groupby(names.MONITORED_DAY), key=lambda item: item[0]):
        if part[names.LABEL].nunique() < 2:
            continue  # no fraud that day (or only fraud): PR-AUC and recall say nothing
        measured = metrics.evaluate(part[names.PREDICTION_SCORE], part[names.LABEL], threshold)
        rows += [(day, metric, float(measured[metric])) for metric in QUALITY_METRICS]
    return rows


def of_version(results: DataFrame, model_version: str) -> DataFrame:
    """``results`` (day, metric, value) as the monitoring table's rows for ``model_version``."""
    return results.select(
        F.col(names.MONITORED_DAY).cast("date"),
        F.lit(str(model_version)).alias(names.MODEL_VERSION),
        names.METRIC,
        F.col(names.METRIC_VALUE).cast("double"),
    )


def record(spark: SparkSession, results: DataFrame, model_version: str) -> dict[str, int]:
    """Merge ``results`` (day, metric, value) for ``model_version`` into the monitoring table."""
    return record_rows(spark, of_version(results, model_version))


def record_rows(spark: SparkSession, rows: DataFrame) -> dict[str, int]:
    """Merge rows of the monitoring table's schema (several versions at once) into it."""
    path = lakehouse.location(names.MONITORING_TABLE)
    lakehouse.ensure_table(spark, path, SCHEMA)
    return lakehouse.upsert_few(spark, path, rows, list(KEYS))


def reading(psi: float) -> str:
    """PSI in words, by the thresholds above."""
    if psi < PSI_STABLE:
        return "stable"
    return "moderate shift" if psi <= PSI_SIGNIFICANT else "significant shift"
