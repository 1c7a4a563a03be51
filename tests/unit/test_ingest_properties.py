"""Ingestion, property-based (Hypothesis): for generated events, valid and invalid, each
ends in raw or in quarantine exactly once, for the contract's reason.

Each example is a whole landed file run through the real streaming ingestion into Delta
tables, so the number of examples is small and the seed fixed.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbook import contract, ingest, intake, names, sources

pytestmark = pytest.mark.spark


def field_value(field: contract.EventField):
    if field.pattern:
        return st.from_regex(field.pattern, fullmatch=True).filter(str.isascii)
    if field.choices:
        return st.sampled_from(field.choices)
    if field.kind == contract.NUMBER:
        return st.floats(0.01, contract.MAX_AMOUNT).map(lambda a: round(a, 2))
    if field.kind == contract.BOOLEAN:
        return st.booleans()
    instants = st.datetimes(datetime(2000, 1, 2), datetime(2025, 12, 31), timezones=st.just(UTC))
    return instants.map(lambda t: t.strftime("%Y-%m-%dT%H:%M:%S") + "Z")


valid_events = st.fixed_dictionaries(
    {f.name: field_value(f) for f in contract.FIELDS if f.required},
    optional={f.name: field_value(f) for f in contract.FIELDS if not f.required},
)
json_values = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
not_a_line = st.characters(exclude_characters="\r\n", codec="utf-8")


@st.composite
def lines(draw) -> str | bytes:
    """One line of a landed file: a valid event, one that breaks a rule of the contract, one
    with a field changed, dropped or added, or not JSON."""
    event = draw(valid_events)
    kinds = ["valid", "rule", "changed", "dropped", "extra", "text"]
    match draw(st.sampled_from(kinds)):
        case "rule":
            full = {
                **event,
                **{
                    f: draw(field_value(contract.BY_NAME[f]))
                    for f in contract.EVENT_FIELDS
                    if f not in event
                },
            }
            return contract.example_of(draw(st.sampled_from(contract.STATELESS)), full)
        case "changed":
            event[draw(st.sampled_from(contract.EVENT_FIELDS))] = draw(json_values)
        case "dropped":
            event.pop(draw(st.sampled_from(sorted(event))))
        case "extra":
            event[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
        case "text":
            return draw(st.text(not_a_line, max_size=40))
    return json.dumps(event)


def expected(batch: list[str | bytes]) -> tuple[set[str], dict[str, str]]:
    """Raw's transaction ids and quarantine's {record id: reason}, by the contract alone."""
    reasons = {line: contract.check(line) for line in batch}
    valid = [line for line in batch if reasons[line] is None]
    instants = [contract.parse_timestamp(json.loads(v)[names.TIMESTAMP]) for v in valid]
    clock = max(instants, default=None)  # the raw table starts empty
    kept: dict[str, str] = {}
    for line in sorted(valid, key=_record_id):  # the first copy by record id stays
        reasons[line] = contract.check(line, clock)
        txid = json.loads(line)[names.TRANSACTION_ID]
        if reasons[line] is None and txid in kept:
            reasons[line] = "duplicate_transaction_id"
        elif reasons[line] is None:
            kept[txid] = line
    refused = {_record_id(line): r for line, r in reasons.items() if r is not None}
    return set(kept), refused


def _record_id(line: str | bytes) -> str:
    return hashlib.sha256(intake.as_bytes(line)).hexdigest()


@settings(
    max_examples=6,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(lines(), min_size=1, max_size=60, unique=True))
def test_each_generated_event_ends_in_raw_or_quarantine_exactly_once(spark, tmp_path, batch):
    root = tmp_path / uuid.uuid4().hex
    landing, raw, quarantine = (str(root / part) for part in ("landing", "raw", "quarantine"))
    intake.land_lines(root / "landing" / "events.jsonl", batch)
    ingest.start_ingest(
        spark,
        sources.landed_files_stream(spark, landing),
        raw,
        quarantine,
        checkpoint=str(root / "checkpoint"),
    ).awaitTermination()
    raw_ids = [
        r[0] for r in spark.read.format("delta").load(raw).select(names.TRANSACTION_ID).collect()
    ]
    refused = spark.read.format("delta").load(quarantine).select(names.RECORD_ID, names.REASON)
    refused = [tuple(r) for r in refused.collect()]
    want_raw, want_refused = expected(batch)
    assert sorted(raw_ids) == sorted(want_raw)  # each once
    assert len(refused) == len({record for record, _ in refused})  # each once
    assert dict(refused) == want_refused


def test_one_old_event_cannot_stretch_the_feature_calendar(spark, tmp_path):
    """A valid-looking event years before the data is refused; the calendar stays its size."""
    from workbook import features

    days = [f"2025-01-{d:02d}T12:00:00Z" for d in range(1, 11)]
    recent = [
        {
            names.TRANSACTION_ID: f"TX-{i}",
            names.TIMESTAMP: t,
            names.ACCOUNT_ID: "ACC000001",
            names.AMOUNT: 10.0,
            names.CURRENCY: "EUR",
        }
        for i, t in enumerate(days)
    ]
    old = [
        recent[0] | {names.TRANSACTION_ID: "TX-OLD", names.TIMESTAMP: "2003-06-01T00:00:00Z"},
        recent[0] | {names.TRANSACTION_ID: "TX-ANCIENT", names.TIMESTAMP: "1970-01-01T00:00:00Z"},
    ]
    root = tmp_path / "calendar"
    intake.land_lines(root / "landing" / "events.jsonl", [json.dumps(e) for e in recent + old])
    raw, quarantine = str(root / "raw"), str(root / "quarantine")
    ingest.start_ingest(
        spark,
        sources.landed_files_stream(spark, str(root / "landing")),
        raw,
        quarantine,
        checkpoint=str(root / "checkpoint"),
    ).awaitTermination()
    refused = spark.read.format("delta").load(quarantine).select(names.TRANSACTION_ID, names.REASON)
    assert sorted(tuple(r) for r in refused.collect()) == [
        ("TX-ANCIENT", "ancient_timestamp"),
        ("TX-OLD", "late_event"),
    ]
    calendar = features.daily_account_features(spark.read.format("delta").load(raw))
    assert calendar.count() == len(days)  # one account, ten days: not twenty-two years
