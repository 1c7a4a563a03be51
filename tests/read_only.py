"""Statements the feature store's read-only role must be refused, on either profile."""

WRITES = [
    "INSERT INTO daily_account_features (account_id, feature_date) VALUES ('X', '2025-01-01')",
    "UPDATE daily_account_features SET txn_count_7d = 0",
    "DELETE FROM daily_account_features",
    "TRUNCATE daily_account_features",
    "INSERT INTO daily_account_features_staging (account_id) VALUES ('X')",
    "CREATE TABLE reader_owned (x int)",
    "CREATE TEMP TABLE reader_scratch (x int)",
    "DROP TABLE daily_account_features",
    "ALTER TABLE daily_account_features ADD COLUMN x int",
    "CREATE ROLE sneaky",
]
