"""Logical names of buckets, tables, topics and columns: defined once, used everywhere."""

RAW_BUCKET = "raw-data-bucket"
CURATED_BUCKET = "curated-data-bucket"
MODELS_BUCKET = "models-bucket"
PREDICTIONS_BUCKET = "predictions-bucket"
BUCKETS = (RAW_BUCKET, CURATED_BUCKET, MODELS_BUCKET, PREDICTIONS_BUCKET)

# Lakehouse locations as (bucket, name).
RAW_TABLE = (RAW_BUCKET, "financial_data_delta")
QUARANTINE_TABLE = (RAW_BUCKET, "financial_data_quarantine")
LABELS_TABLE = (RAW_BUCKET, "financial_fraud_labels")
LANDING_ZONE = (RAW_BUCKET, "landing/transactions")
SIMULATION_MANIFEST = (RAW_BUCKET, "landing/simulation.json")
FEATURES_TABLE = (CURATED_BUCKET, "financial_features_daily_account")
MODEL = (MODELS_BUCKET, "financial_fraud_model")
PREDICTIONS_TABLE = (PREDICTIONS_BUCKET, "financial_fraud_predictions_stream")

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

KNOWN_CURRENCIES = ("EUR", "GBP", "USD")
