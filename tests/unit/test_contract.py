"""One event contract: for every rule, ingestion, the service and the contract's own check
agree on the same examples. What one refuses, none accepts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from pyspark.sql import functions as F
from test_validation import GOOD

from workbook import contract, ingest, intake, lakehouse, names, serving, simulator

VALID = GOOD  # a valid event, all nine fields
VALID_LINES = [
    json.dumps(VALID),
    json.dumps({k: VALID[k] for k in contract.REQUIRED_FIELDS}),
    json.dumps(VALID | {names.TIMESTAMP: "2025-01-02T03:04:05.25+02:00", names.IS_FLAGGED: True}),
    json.dumps(VALID | {names.TIMESTAMP: "2025-01-02T03:04:05.123456-14:00"}),
    json.dumps(VALID | {names.AMOUNT: contract.MAX_AMOUNT}),
    json.dumps(VALID | {names.AMOUNT: 1}),  # a JSON integer is a number
    json.dumps(VALID | {names.MERCHANT_ID: None, names.CATEGORY: None}),
    json.dumps(VALID | {names.ACCOUNT_ID: "ACC123456789", names.TRANSACTION_ID: "a"}),
]
# Refused, each for a rule's reason, beyond the rules' own examples.
MORE_REFUSED = [
    ("[1, 2]", "malformed_json"),
    ('{"amount": 1, "amount": 2}', "malformed_json"),
    (json.dumps(VALID | {names.AMOUNT: float("nan")}), "malformed_json"),
    (json.dumps(VALID | {names.AMOUNT: float("inf")}), "malformed_json"),
    (json.dumps(VALID).replace("12.5", "1e400"), "invalid_amount"),
    (json.dumps(VALID | {names.AMOUNT: "12.5"}), "wrong_type"),
    (json.dumps(VALID | {names.AMOUNT: True}), "wrong_type"),
    (json.dumps(VALID | {names.IS_FLAGGED: "true"}), "wrong_type"),
    (json.dumps(VALID | {names.IS_FLAGGED: 1}), "wrong_type"),
    (json.dumps(VALID | {names.TIMESTAMP: 1735787045}), "wrong_type"),
    (json.dumps(VALID | {names.CATEGORY: 7}), "wrong_type"),
    (json.dumps(VALID | {names.TRANSACTION_ID: ""}), "invalid_transaction_id"),
    (json.dumps(VALID | {names.TRANSACTION_ID: "   "}), "invalid_transaction_id"),
    (json.dumps(VALID | {names.ACCOUNT_ID: "ACC000001\n"}), "invalid_account_id"),
    (json.dumps(VALID | {names.ACCOUNT_ID: "acc000001"}), "invalid_account_id"),
    (json.dumps(VALID | {names.MERCHANT_ID: ""}), "invalid_merchant_id"),
    (json.dumps(VALID | {names.CATEGORY: "Retail"}), "invalid_category"),
    (json.dumps(VALID | {names.AMOUNT: 0}), "invalid_amount"),
    (json.dumps(VALID | {names.AMOUNT: contract.MAX_AMOUNT + 0.01}), "invalid_amount"),
    (json.dumps(VALID | {names.CURRENCY: "eur"}), "unknown_currency"),
    (json.dumps(VALID | {names.TIMESTAMP: "2025-02-30T00:00:00Z"}), "invalid_timestamp"),
    (json.dumps(VALID | {names.TIMESTAMP: "2025-01-02T03:04:05"}), "invalid_timestamp"),
    (json.dumps(VALID | {names.TIMESTAMP: "2025-01-02T03:04:05+15:00"}), "invalid_timestamp"),
    (json.dumps(VALID | {names.TIMESTAMP: "0001-01-01T00:00:00Z"}), "invalid_timestamp"),
    (json.dumps(VALID | {names.TIMESTAMP: "1999-12-31T23:59:59Z"}), "ancient_timestamp"),
]
EXAMPLES = [(contract.example_of(r, VALID), r) for r in contract.STATELESS] + MORE_REFUSED


def spark_reasons(spark, lines) -> list[str | None]:
    frame = spark.createDataFrame(
        [(line if isinstance(line, bytes) else line.encode(),) for line in lines], "value binary"
    ).selectExpr("cast(value as string) as value")  # the bytes as the sources deliver them
    rows = ingest.parse_and_validate(frame).select(names.RECORD_ID, names.REASON).collect()
    by_record = {r[names.RECORD_ID]: r[names.REASON] for r in rows}
    return [by_record[_record_id(line)] for line in lines]


def _record_id(line) -> str:
    import hashlib

    return hashlib.sha256(line if isinstance(line, bytes) else line.encode()).hexdigest()


def service_accepts(line) -> bool:
    """Whether the service takes the line in: as a /score request and in a batch."""
    data = line if isinstance(line, bytes) else line.encode()
    try:
        serving.Transaction.model_validate_json(data)
        scored = True
    except ValidationError:
        scored = False
    try:
        outcomes, _ = intake.judge(intake.read_batch(b"[" + data + b"]"))
        taken = outcomes[0].reason is None
    except intake.BadBatch:
        taken = False
    assert scored == taken, f"/score and /transactions disagree on {data[:200]!r}"
    return taken


def test_every_rule_judged_by_the_event_alone_has_examples():
    assert {r for _, r in EXAMPLES} == set(contract.STATELESS)


@pytest.mark.spark
def test_the_contract_and_ingestion_give_the_same_reason(spark):
    lines = [line for line, _ in EXAMPLES] + VALID_LINES
    expected = [reason for _, reason in EXAMPLES] + [None] * len(VALID_LINES)
    assert [contract.check(line) for line in lines] == expected
    assert spark_reasons(spark, lines) == expected


@pytest.mark.parametrize(("line", "reason"), EXAMPLES, ids=[r for _, r in EXAMPLES])
def test_the_service_refuses_what_the_contract_refuses(line, reason):
    assert contract.check(line) == reason
    assert not service_accepts(line)


@pytest.mark.parametrize("line", VALID_LINES)
def test_the_service_accepts_what_the_contract_accepts(line):
    assert contract.check(line) is None
    assert service_accepts(line)


@pytest.mark.spark
def test_late_events_against_the_data_clock(spark):
    clock = datetime(2025, 6, 1, tzinfo=UTC)
    on_time = VALID | {names.TIMESTAMP: "2024-06-01T00:00:00Z"}  # 365 days before the clock
    late = VALID | {names.TIMESTAMP: "2024-05-30T23:59:59Z", names.TRANSACTION_ID: "TX-LATE"}
    lines = [json.dumps(on_time), json.dumps(late)]
    assert [contract.check(line, clock) for line in lines] == [None, "late_event"]
    assert [contract.check(line) for line in lines] == [None, None]  # no clock: none late
    frame = spark.createDataFrame([(line,) for line in lines], "value string")
    checked = ingest.mark_late(ingest.parse_and_validate(frame), clock)
    assert [r[names.REASON] for r in checked.collect()] == [None, "late_event"]
    newest = VALID | {names.TIMESTAMP: "2025-06-01T00:00:00Z", names.TRANSACTION_ID: "TX-NEW"}
    outcomes, accepted = intake.judge([newest, on_time, late])  # the batch's own clock
    assert [o.reason for o in outcomes] == [None, None, "late_event"]
    assert accepted == [json.dumps(newest), json.dumps(on_time)]


@pytest.mark.spark
@pytest.mark.parametrize(
    ("raw_days", "batch_days", "clock_day"),
    [((3, 9), (5,), 9), ((3,), (5, 7), 7), ((), (5,), 5), ((3,), (), 3), ((), (), None)],
    ids=["raw_newer", "batch_newer", "empty_raw", "no_valid_event", "nothing"],
)
def test_the_data_clock_is_the_newest_event_of_raw_and_the_batch(
    spark, tmp_path, raw_days, batch_days, clock_day
):
    def line(day):
        return json.dumps(VALID | {names.TIMESTAMP: f"2025-06-0{day}T12:00:00Z"})

    frame = spark.createDataFrame([(line(d),) for d in (*batch_days, 1)], "value string")
    checked = ingest.parse_and_validate(frame).withColumn(  # the day-1 event is refused
        names.REASON, F.when(F.col(names.TIMESTAMP).cast("date") == "2025-06-01", "refused")
    )
    path = str(tmp_path / "raw")
    lakehouse.ensure_table(spark, path, ingest.RAW_SCHEMA)
    for day in raw_days:  # a file each, as each ingestion batch writes
        noon = datetime(2025, 6, day, 12, tzinfo=UTC)
        row = (f"TX-{day}", noon, "ACC", 1.0, "EUR", None, None, None, None, 0)
        lakehouse.append(spark, path, spark.createDataFrame([row], ingest.RAW_SCHEMA))
    clock = ingest.data_clock(checked, spark.read.format("delta").load(path))
    if clock_day is None:
        assert clock is None
    else:  # Spark gives a naive local time
        assert clock.astimezone(UTC) == datetime(2025, 6, clock_day, 12, tzinfo=UTC)


def test_a_batch_refuses_a_repeated_transaction_id_after_its_first_valid_event():
    bad_copy = VALID | {names.AMOUNT: -1}
    outcomes, accepted = intake.judge([bad_copy, VALID, VALID])
    assert [o.reason for o in outcomes] == ["invalid_amount", None, "duplicate_transaction_id"]
    assert len(accepted) == 1


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"\xff\xfe", 400),
        (b"{not json", 400),
        (b"[" * 100_000 + b"]" * 100_000, 400),
        (b"{}", 422),
        (b"[]", 422),
        (json.dumps([VALID] * (intake.MAX_EVENTS + 1)).encode(), 422),
        (b" " * (intake.MAX_BODY_BYTES + 1), 413),
    ],
    ids=["not_utf8", "not_json", "too_deep", "object", "empty", "too_many", "too_large"],
)
def test_a_body_that_is_not_a_batch_is_refused_whole(body, status):
    with pytest.raises(intake.BadBatch) as refused:
        intake.read_batch(body)
    assert refused.value.status == status


def test_the_simulator_has_one_malformed_kind_per_rule():
    assert set(simulator.MALFORMED_KINDS) == set(contract.REASONS)


def test_the_openapi_schema_is_the_contract():
    schema = serving.create_app().openapi()["components"]["schemas"]["Transaction"]
    assert set(schema["properties"]) == set(contract.EVENT_FIELDS)
    assert set(schema["required"]) == set(contract.REQUIRED_FIELDS)
    assert schema["additionalProperties"] is False
    for field in contract.PATTERNED_FIELDS:
        shown = json.dumps(schema["properties"][field.name])
        assert json.dumps(field.pattern)[1:-1] in shown


def test_future_is_judged_against_the_wall_clock():
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    line = json.dumps(VALID | {names.TIMESTAMP: tomorrow.strftime("%Y-%m-%dT%H:%M:%SZ")})
    assert contract.check(line) == "future_timestamp"
    assert not service_accepts(line)
