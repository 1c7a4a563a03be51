"""Feature definitions: daily account features, and the point-in-time transaction vector.

The daily table has one row per account and calendar day, from the account's first
transaction to the last day in the data (idle days included, so "the last 7 rows" are
"the last 7 days"). A transaction is scored with its own attributes plus its account's
row for the *previous* day: nothing from the transaction's own day or later.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from workbook import names
from workbook.simulator import SimulationConfig

NIGHT_END_HOUR = 6  # 00:00 to 05:59 UTC counts as night
DAILY_FEATURES = (
    "daily_transaction_count",
    "daily_total_amount",
    "daily_average_amount",
    "daily_max_amount",
    "daily_distinct_merchants",
    "daily_night_count",
)
ROLLING_FEATURES = (
    "txn_count_7d",
    "amount_sum_7d",
    "amount_max_7d",
    "night_share_7d",
    "txn_count_30d",
    "amount_avg_30d",
)
FEATURE_COLUMNS = (*DAILY_FEATURES, *ROLLING_FEATURES)
FEATURE_KEYS = (names.ACCOUNT_ID, names.TRANSACTION_DATE)

# The model's input: the transaction's own attributes and its account's history.
NUMERIC_INPUTS = (
    "amount_log",
    "amount_vs_30d_avg",
    "is_night",
    "prev_day_count",
    "txn_count_7d",
    "amount_sum_7d_log",
    "amount_max_7d_log",
    "night_share_7d",
    "txn_count_30d",
)
CATEGORICAL_INPUTS = (names.CATEGORY, names.TRANSACTION_TYPE)

FEATURES_SCHEMA = T.StructType(
    [
        T.StructField(names.ACCOUNT_ID, T.StringType(), False),
        T.StructField(names.TRANSACTION_DATE, T.DateType(), False),
        *[
            T.StructField(c, T.LongType() if "count" in c or "distinct" in c else T.DoubleType())
            for c in FEATURE_COLUMNS
        ],
    ]
)


def _is_night(ts: str = names.TIMESTAMP):
    return F.hour(ts) < NIGHT_END_HOUR


def in_period(frame: DataFrame, config: SimulationConfig) -> DataFrame:
    """The rows of the simulated period alone: days appended later (by 04) change nothing here."""
    day = F.to_date(names.TIMESTAMP)
    return frame.filter(day.between(F.lit(config.day(config.first_day)), F.lit(config.end_date)))


def daily_account_features(raw: DataFrame) -> DataFrame:
    """One row per account and day with the daily and rolling features."""
    tx = raw.withColumn(names.TRANSACTION_DATE, F.to_date(names.TIMESTAMP))
    daily = tx.groupBy(names.ACCOUNT_ID, names.TRANSACTION_DATE).agg(
        F.count(names.TRANSACTION_ID).alias("daily_transaction_count"),
        F.round(F.sum(names.AMOUNT), 2).alias("daily_total_amount"),
        F.round(F.avg(names.AMOUNT), 4).alias("daily_average_amount"),
        F.max(names.AMOUNT).alias("daily_max_amount"),
        # A set per account and day (a handful of merchants): countDistinct would expand
        # every row once per distinct aggregate and shuffle them again.
        F.size(F.collect_set(names.MERCHANT_ID)).alias("daily_distinct_merchants"),
        F.count(F.when(_is_night(), 1)).alias("daily_night_count"),
    )
    last_day = tx.agg(F.max(names.TRANSACTION_DATE).alias("_last"))
    calendar = (
        daily.groupBy(names.ACCOUNT_ID)
        .agg(F.min(names.TRANSACTION_DATE).alias("_first"))
        .crossJoin(last_day)
        .select(
            names.ACCOUNT_ID,
            F.explode(F.sequence("_first", "_last")).alias(names.TRANSACTION_DATE),
        )
    )
    zero_when_idle = {
        c: 0 for c in DAILY_FEATURES if c != "daily_average_amount" and c != "daily_max_amount"
    }
    dense = calendar.join(daily, list(FEATURE_KEYS), "left").fillna(zero_when_idle)

    def last(n):
        return (
            Window.partitionBy(names.ACCOUNT_ID)
            .orderBy(names.TRANSACTION_DATE)
            .rowsBetween(-(n - 1), 0)
        )

    count_7d = F.sum("daily_transaction_count").over(last(7))
    count_30d = F.sum("daily_transaction_count").over(last(30))
    features = dense.select(
        *FEATURE_KEYS,
        *DAILY_FEATURES,
        count_7d.alias("txn_count_7d"),
        F.round(F.sum("daily_total_amount").over(last(7)), 2).alias("amount_sum_7d"),
        F.coalesce(F.max("daily_max_amount").over(last(7)), F.lit(0.0)).alias("amount_max_7d"),
        F.round(
            F.coalesce(
                F.try_divide(F.sum("daily_night_count").over(last(7)), count_7d), F.lit(0.0)
            ),
            4,
        ).alias("night_share_7d"),
        count_30d.alias("txn_count_30d"),
        F.round(F.try_divide(F.sum("daily_total_amount").over(last(30)), count_30d), 4).alias(
            "amount_avg_30d"
        ),
    )
    return features.select([F.col(f.name).cast(f.dataType) for f in FEATURES_SCHEMA])


def as_of_date(ts: str = names.TIMESTAMP):
    """The day of the feature row a transaction is scored with: the day before its own."""
    return F.date_sub(F.to_date(ts), 1)


def transaction_features(transactions: DataFrame, features: DataFrame) -> DataFrame:
    """Each transaction with the model inputs, joined to its account's previous-day row.

    Works for batch and streaming ``transactions`` alike (a stream-static join).
    """
    as_of = "_as_of"
    tx = transactions.withColumn(names.TRANSACTION_DATE, F.to_date(names.TIMESTAMP)).withColumn(
        as_of, as_of_date()
    )
    history = features.select(
        names.ACCOUNT_ID,
        F.col(names.TRANSACTION_DATE).alias(as_of),
        F.col("daily_transaction_count").alias("prev_day_count"),
        *[c for c in ROLLING_FEATURES],
    )
    joined = tx.join(history, [names.ACCOUNT_ID, as_of], "left")
    amount = F.col(names.AMOUNT)
    # An account without history gets neutral values: no activity, typical amount.
    typical = F.coalesce(F.col("amount_avg_30d"), amount)
    inputs = {
        "amount_log": F.log1p(amount),
        "amount_vs_30d_avg": F.log((amount + 1) / (typical + 1)),
        "is_night": _is_night().cast("double"),
        "prev_day_count": F.coalesce("prev_day_count", F.lit(0)).cast("double"),
        "txn_count_7d": F.coalesce("txn_count_7d", F.lit(0)).cast("double"),
        "amount_sum_7d_log": F.log1p(F.coalesce("amount_sum_7d", F.lit(0.0))),
        "amount_max_7d_log": F.log1p(F.coalesce("amount_max_7d", F.lit(0.0))),
        "night_share_7d": F.coalesce("night_share_7d", F.lit(0.0)),
        "txn_count_30d": F.coalesce("txn_count_30d", F.lit(0)).cast("double"),
    }
    return joined.select(
        *transactions.columns,
        names.TRANSACTION_DATE,
        *[inputs[c].alias(c) for c in NUMERIC_INPUTS],
    )


def latest_per_account(features: DataFrame) -> DataFrame:
    """Each account's most recent feature row: what the online store serves."""
    newest = Window.partitionBy(names.ACCOUNT_ID).orderBy(F.col(names.TRANSACTION_DATE).desc())
    return (
        features.withColumn("_rank", F.row_number().over(newest)).filter("_rank = 1").drop("_rank")
    )
