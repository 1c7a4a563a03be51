"""The transaction event: its fields and the bounds every part of the workbook checks.

Ingestion's Spark rules and the scoring service's request model both read these values, so
the two refuse the same amounts, currencies and identifiers. Nothing here imports Spark.
"""

from workbook import names

EVENT_FIELDS = (
    names.TRANSACTION_ID,
    names.TIMESTAMP,
    names.ACCOUNT_ID,
    names.AMOUNT,
    names.CURRENCY,
    names.TRANSACTION_TYPE,
    names.MERCHANT_ID,
    names.CATEGORY,
    names.IS_FLAGGED,
)
REQUIRED_FIELDS = (
    names.TRANSACTION_ID,
    names.TIMESTAMP,
    names.ACCOUNT_ID,
    names.AMOUNT,
    names.CURRENCY,
)
KNOWN_CURRENCIES = ("EUR", "GBP", "USD")
MAX_AMOUNT = 1_000_000.0
MAX_EVENT_BYTES = 16_384
# The simulator's account ids: "ACC" and a zero-padded number.
ACCOUNT_ID_PATTERN = r"^ACC[0-9]{6,9}$"
TEXT_LIMIT = 128  # the longest free-text field the service takes
