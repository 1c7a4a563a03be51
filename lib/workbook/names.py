"""Logical names of buckets, tables, topics and columns: defined once, used everywhere.

Nothing here imports Spark, so the scoring service and plain-Python tools can use it too.
"""

from typing import NamedTuple


class Location(NamedTuple):
    """Where a table or file lives: a bucket, and a name inside it."""

    bucket: str
    name: str


RAW_BUCKET = "raw-data-bucket"
CURATED_BUCKET = "curated-data-bucket"
MODELS_BUCKET = "models-bucket"
PREDICTIONS_BUCKET = "predictions-bucket"
BUCKETS = (RAW_BUCKET, CURATED_BUCKET, MODELS_BUCKET, PREDICTIONS_BUCKET)

RAW_TABLE = Location(RAW_BUCKET, "financial_data_delta")
QUARANTINE_TABLE = Location(RAW_BUCKET, "financial_data_quarantine")
LABELS_TABLE = Location(RAW_BUCKET, "financial_fraud_labels")
LANDING_ZONE = Location(RAW_BUCKET, "landing/transactions")
SIMULATION_MANIFEST = Location(RAW_BUCKET, "landing/simulation.json")
FEATURES_TABLE = Location(CURATED_BUCKET, "financial_features_daily_account")
MODEL = Location(MODELS_BUCKET, "financial_fraud_model")
PREDICTIONS_TABLE = Location(PREDICTIONS_BUCKET, "financial_fraud_predictions_stream")
MONITORING_TABLE = Location(PREDICTIONS_BUCKET, "financial_fraud_monitoring")
# Each champion's reference bins for drift, one JSON file per version.
MONITORING_REFERENCES = Location(PREDICTIONS_BUCKET, "financial_fraud_monitoring_references")
DECISIONS_TABLE = Location(PREDICTIONS_BUCKET, "financial_fraud_loop_decisions")

TRANSACTIONS_TOPIC = "transactions"
ONLINE_FEATURES_TABLE = "daily_account_features"

# Columns of the seed's transaction events.
TRANSACTION_ID = "transaction_id"
TIMESTAMP = "timestamp"
ACCOUNT_ID = "account_id"
AMOUNT = "amount"
CURRENCY = "currency"
TRANSACTION_TYPE = "transaction_type"
MERCHANT_ID = "merchant_id"
CATEGORY = "category"
IS_FLAGGED = "is_flagged"
TRANSACTION_DATE = "transaction_date"
LABEL = "is_fraud"

# Ingestion: the event's text, and what the raw and quarantine tables add to it.
VALUE = "value"  # an event's text: a landed JSON line or a Kafka message's value
RAW_VALUE = "raw_value"
RECORD_ID = "record_id"
REASON = "reason"
BATCH_ID = "ingest_batch_id"

# The daily account features: one row per account and day.
DAILY_TRANSACTION_COUNT = "daily_transaction_count"
DAILY_TOTAL_AMOUNT = "daily_total_amount"
DAILY_AVERAGE_AMOUNT = "daily_average_amount"
DAILY_MAX_AMOUNT = "daily_max_amount"
DAILY_DISTINCT_MERCHANTS = "daily_distinct_merchants"
DAILY_NEW_MERCHANTS = "daily_new_merchants"  # paid that day, and on none of the 30 before
DAILY_NIGHT_COUNT = "daily_night_count"
TXN_COUNT_7D = "txn_count_7d"
AMOUNT_SUM_7D = "amount_sum_7d"
AMOUNT_MAX_7D = "amount_max_7d"
NIGHT_SHARE_7D = "night_share_7d"
TXN_COUNT_30D = "txn_count_30d"
AMOUNT_AVG_30D = "amount_avg_30d"
DAILY_FEATURES = (
    DAILY_TRANSACTION_COUNT,
    DAILY_TOTAL_AMOUNT,
    DAILY_AVERAGE_AMOUNT,
    DAILY_MAX_AMOUNT,
    DAILY_DISTINCT_MERCHANTS,
    DAILY_NEW_MERCHANTS,
    DAILY_NIGHT_COUNT,
)
ROLLING_FEATURES = (
    TXN_COUNT_7D,
    AMOUNT_SUM_7D,
    AMOUNT_MAX_7D,
    NIGHT_SHARE_7D,
    TXN_COUNT_30D,
    AMOUNT_AVG_30D,
)
FEATURE_COLUMNS = (*DAILY_FEATURES, *ROLLING_FEATURES)
FEATURE_KEYS = (ACCOUNT_ID, TRANSACTION_DATE)
# Counts are whole numbers (bigint); every other feature is an amount or a share (double).
COUNT_FEATURES = (
    DAILY_TRANSACTION_COUNT,
    DAILY_DISTINCT_MERCHANTS,
    DAILY_NEW_MERCHANTS,
    DAILY_NIGHT_COUNT,
    TXN_COUNT_7D,
    TXN_COUNT_30D,
)

# The online table: the latest feature row per account, and the day it describes.
FEATURE_DATE = "feature_date"
LAST_UPDATED = "last_updated"

# The model's inputs: the transaction's own attributes and its account's history.
AMOUNT_LOG = "amount_log"
AMOUNT_VS_30D_AVG = "amount_vs_30d_avg"
IS_NIGHT = "is_night"
PREV_DAY_COUNT = "prev_day_count"
PREV_DAY_NEW_MERCHANTS = "prev_day_new_merchants"
AMOUNT_SUM_7D_LOG = "amount_sum_7d_log"
AMOUNT_MAX_7D_LOG = "amount_max_7d_log"
NUMERIC_INPUTS = (
    AMOUNT_LOG,
    AMOUNT_VS_30D_AVG,
    IS_NIGHT,
    PREV_DAY_COUNT,
    TXN_COUNT_7D,
    AMOUNT_SUM_7D_LOG,
    AMOUNT_MAX_7D_LOG,
    NIGHT_SHARE_7D,
    TXN_COUNT_30D,
    PREV_DAY_NEW_MERCHANTS,
)
CATEGORICAL_INPUTS = (CATEGORY, TRANSACTION_TYPE)
NIGHT_END_HOUR = 6  # "night" in the features' names: 00:00 to 05:59 UTC

# Training and scoring.
CLASS_WEIGHT = "class_weight"
ASSEMBLED = "raw_features"  # the assembled vector, before scaling
SCALED = "features"  # the scaled vector the classifier reads
PROBABILITY = "probability"  # Spark's (legit, fraud) probabilities
PREDICTION = "prediction"  # Spark's decision at the model's threshold
PREDICTION_SCORE = "prediction_score"  # the probability of fraud
IS_FRAUD_PREDICTION = "is_fraud_prediction"
INFERENCE_TIMESTAMP = "inference_timestamp"
MODEL_VERSION = "model_version"  # the registered version that scored a prediction
MONITORED_DAY = "monitored_day"  # the day a monitoring result is about
METRIC = "metric"  # psi:<column>, precision, recall, pr_auc
METRIC_VALUE = "metric_value"

# Experiment tracking and the model registry (MLflow); the model's name is MODEL's.
EXPERIMENT = "financial_fraud_scoring"
CHAMPION = "champion"  # the alias of the version in use
CHALLENGER = "challenger"  # the alias of a version being evaluated
