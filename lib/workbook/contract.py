"""The transaction event, defined once: its fields, and the rules an event must keep.

Every part of the workbook that judges an event derives its judgement from here:
ingestion's Spark rules (``ingest``), the service's request models and so its OpenAPI
schema (``serving``), the simulator's malformed events (one kind per rule) and the table
of rules in notebook 01. ``check`` is the rules in plain Python; a test runs every rule's
example through all of them and finds that what one refuses, none accepts.

Nothing here imports Spark or pydantic: the service and the simulator stay light.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from workbook import names

TEXT, NUMBER, TIMESTAMP, BOOLEAN = "text", "number", "timestamp", "boolean"


@dataclass(frozen=True)
class EventField:
    name: str
    kind: str  # the JSON type it must have: TEXT (a string), NUMBER, TIMESTAMP (a string), BOOLEAN
    required: bool
    description: str
    pattern: str | None = None  # the whole text must match (identifiers and codes)
    choices: tuple[str, ...] = ()  # the only values allowed


KNOWN_CURRENCIES = ("EUR", "GBP", "USD")
FIELDS = (
    EventField(
        names.TRANSACTION_ID,
        TEXT,
        True,
        "1 to 64 letters, digits, '-' or '_', unique per transaction",
        pattern=r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}",
    ),
    EventField(names.TIMESTAMP, TIMESTAMP, True, "when the payment was made, with its UTC offset"),
    EventField(names.ACCOUNT_ID, TEXT, True, "'ACC' and 6 to 9 digits", pattern=r"ACC[0-9]{6,9}"),
    EventField(names.AMOUNT, NUMBER, True, "a JSON number above 0, at most 1,000,000"),
    EventField(names.CURRENCY, TEXT, True, "ISO 4217 code", choices=KNOWN_CURRENCIES),
    EventField(
        names.TRANSACTION_TYPE,
        TEXT,
        False,
        "a lower-case code, e.g. purchase, online",
        pattern=r"[a-z][a-z0-9_]{0,31}",
    ),
    EventField(names.MERCHANT_ID, TEXT, False, "'M' and 6 to 9 digits", pattern=r"M[0-9]{6,9}"),
    EventField(
        names.CATEGORY,
        TEXT,
        False,
        "a lower-case code, e.g. groceries, travel",
        pattern=r"[a-z][a-z0-9_]{0,31}",
    ),
    EventField(names.IS_FLAGGED, BOOLEAN, False, "true or false: a JSON boolean, not text"),
)
BY_NAME = {f.name: f for f in FIELDS}
EVENT_FIELDS = tuple(f.name for f in FIELDS)
REQUIRED_FIELDS = tuple(f.name for f in FIELDS if f.required)
PATTERNED_FIELDS = tuple(f for f in FIELDS if f.pattern)

MAX_AMOUNT = 1_000_000.0
MAX_EVENT_BYTES = 16_384
# An offset is required; hours from UTC-14 to UTC+14, seconds' fraction up to microseconds.
TIMESTAMP_PATTERN = (
    r"(?:19|20)[0-9]{2}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(?:\.[0-9]{1,6})?(?:Z|[+-](?:0[0-9]|1[0-4]):[0-5][0-9])"
)
# No card transaction of this data is older: an earlier year is a broken clock or a test
# value, and would make the feature job build a calendar of idle days back to it.
EARLIEST_TIMESTAMP = datetime(2000, 1, 1, tzinfo=UTC)
# An event is late when it is older than this before the data's clock: the newest event
# time of the raw table and of the batch it arrives in. A year: about the longest a card
# network lets a payment be disputed; older, it is a replay. Being relative to the data's
# own clock, not the wall clock, a simulation set in the past arrives on time; being longer
# than any simulated period, a whole period ingested in one batch is never late.
MAX_LATENESS = timedelta(days=366)


@dataclass(frozen=True)
class Rule:
    reason: str  # the quarantine's reason, and the service's
    refuses: str  # when, in words


def _rules() -> tuple[Rule, ...]:
    """Every rule, in the order they are applied: an event's reason is the first it breaks."""
    per_pattern = [
        Rule(f"invalid_{f.name}", f"{f.name} is not {f.description.split(', unique')[0]}")
        for f in PATTERNED_FIELDS
    ]
    return (
        Rule("oversized_event", f"the event is longer than {MAX_EVENT_BYTES:,} bytes"),
        Rule("invalid_encoding", "its bytes are not UTF-8 text"),
        Rule(
            "malformed_json",
            "it is not one JSON object (a repeated key, NaN or Infinity are not JSON)",
        ),
        Rule("unknown_field", "it has a field that is not one of the fields above"),
        Rule("missing_required_field", "a required field is missing or null"),
        Rule(
            "wrong_type",
            "a field has another JSON type than the one above",
        ),
        *per_pattern,
        Rule("invalid_amount", f"the amount is not more than 0 and at most {MAX_AMOUNT:,.0f}"),
        Rule("unknown_currency", f"the currency is not one of {', '.join(KNOWN_CURRENCIES)}"),
        Rule(
            "invalid_timestamp",
            "the timestamp is not ISO 8601 with an offset, e.g. 2025-01-31T02:15:00Z",
        ),
        Rule("ancient_timestamp", f"the timestamp is before {EARLIEST_TIMESTAMP:%Y-%m-%d}"),
        Rule("future_timestamp", "the timestamp is later than now"),
        Rule(
            "late_event",
            f"the timestamp is over {MAX_LATENESS.days} days before the data's clock (the "
            "newest event time in raw and in its batch)",
        ),
        Rule("duplicate_transaction_id", "its transaction_id arrived before"),
    )


RULES = _rules()
REASONS = tuple(r.reason for r in RULES)
REFUSES = {r.reason: r.refuses for r in RULES}  # reason -> when, in words
# Judged from the event alone (and the wall clock): every part can apply them.
STATELESS = tuple(r for r in REASONS if r not in ("late_event", "duplicate_transaction_id"))


def full_match(pattern: str) -> str:
    """``pattern`` anchored to the whole text, for engines that search (Java's, JSON Schema's).

    ``\\z``, not ``$``: Java's ``$`` also matches before a final line break.
    """
    return rf"^(?:{pattern})\z"


# -- the rules in plain Python ----------------------------------------------------------------


class _Repeated(dict):
    """A JSON object that repeated a key: RFC 8259 leaves its meaning open; refused."""


class _NotJson:
    """NaN or Infinity: Python reads them, but JSON has no such numbers."""


NOT_JSON = _NotJson()


def _object(pairs):
    keys = [k for k, _ in pairs]
    return (_Repeated if len(set(keys)) != len(keys) else dict)(pairs)


def read_json(text: str | bytes):
    """JSON read as Python reads it, but what RFC 8259 does not allow marked for
    ``check_event`` to refuse: an object that repeats a key, NaN and Infinity. A batch of
    events can so be read whole, and each judged on its own (``ValueError`` if not JSON)."""
    return json.loads(text, parse_constant=lambda _: NOT_JSON, object_pairs_hook=_object)


def _not_strict(event) -> bool:
    values = event.values() if isinstance(event, dict) else [event]
    return isinstance(event, _Repeated) or any(v is NOT_JSON for v in values)


def parse_timestamp(text: str) -> datetime | None:
    """The instant of a contract timestamp, or ``None`` when it is not one."""
    if not re.fullmatch(TIMESTAMP_PATTERN, text):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:  # a day or month that does not exist
        return None


def _has_kind(value, kind: str) -> bool:
    if kind == NUMBER:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == BOOLEAN:
        return isinstance(value, bool)
    return isinstance(value, str)


def _as_float(value) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer too large for a double
        return float("inf")


def check(line: str | bytes, clock: datetime | None = None) -> str | None:
    """The reason ``line`` (one event, as it arrives) is refused, or ``None`` if it is valid.

    ``clock``: the data's clock for ``late_event`` (skipped when ``None``).
    ``duplicate_transaction_id`` needs what arrived before: ingestion applies it.
    """
    data = line.encode() if isinstance(line, str) else line
    if len(data) > MAX_EVENT_BYTES:
        return "oversized_event"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_encoding"
    try:
        event = read_json(text)
    except (ValueError, RecursionError):
        return "malformed_json"
    return check_event(event, clock)


def check_event(event, clock: datetime | None = None) -> str | None:
    """``check`` for an event already parsed from JSON (by ``read_json``)."""
    if not isinstance(event, dict) or _not_strict(event):
        return "malformed_json"
    if set(event) - set(EVENT_FIELDS):
        return "unknown_field"
    if any(event.get(f) is None for f in REQUIRED_FIELDS):
        return "missing_required_field"
    present = {k: v for k, v in event.items() if v is not None}
    if any(not _has_kind(v, BY_NAME[k].kind) for k, v in present.items()):
        return "wrong_type"
    for f in PATTERNED_FIELDS:
        if f.name in present and not re.fullmatch(f.pattern, present[f.name]):
            return f"invalid_{f.name}"
    amount = _as_float(event[names.AMOUNT])
    if not 0 < amount <= MAX_AMOUNT:  # also refuses NaN
        return "invalid_amount"
    if event[names.CURRENCY] not in KNOWN_CURRENCIES:
        return "unknown_currency"
    refused = timestamp_reason(event[names.TIMESTAMP])
    if refused is None and clock is not None and is_late(event[names.TIMESTAMP], clock):
        return "late_event"
    return refused


def timestamp_reason(text: str) -> str | None:
    """Why a timestamp (a string) is refused by itself: invalid, ancient or in the future."""
    when = parse_timestamp(text)
    if when is None:
        return "invalid_timestamp"
    if when < EARLIEST_TIMESTAMP:
        return "ancient_timestamp"
    if when > datetime.now(UTC):
        return "future_timestamp"
    return None


def is_late(text: str, clock: datetime) -> bool:
    """Whether a valid timestamp is more than ``MAX_LATENESS`` before the data's ``clock``."""
    return parse_timestamp(text) < clock - MAX_LATENESS


# -- examples: one event that breaks each rule, and only it ----------------------------------


def _breaking(reason: str, valid: dict) -> str | bytes:
    """A line that breaks ``reason`` and no rule before it, made from the ``valid`` event."""
    event = dict(valid)
    when = parse_timestamp(event[names.TIMESTAMP])
    changes: dict[str, Callable[[], object]] = {
        "unknown_field": lambda: event | {"note": "not in the contract"},
        "missing_required_field": lambda: {k: v for k, v in event.items() if k != names.ACCOUNT_ID},
        "wrong_type": lambda: event | {names.AMOUNT: f"{event[names.AMOUNT]} EUR"},
        "invalid_amount": lambda: event | {names.AMOUNT: -abs(event[names.AMOUNT])},
        "unknown_currency": lambda: event | {names.CURRENCY: "XYZ"},
        "invalid_timestamp": lambda: (
            event | {names.TIMESTAMP: event[names.TIMESTAMP].replace("T", " at ")}
        ),
        "ancient_timestamp": lambda: event | {names.TIMESTAMP: "1970-01-01T00:00:00Z"},
        "future_timestamp": lambda: event | {names.TIMESTAMP: f"2099{event[names.TIMESTAMP][4:]}"},
        "late_event": lambda: (
            event | {names.TIMESTAMP: _iso(when - MAX_LATENESS - timedelta(days=1))}
        ),
        "duplicate_transaction_id": lambda: event,
        **{
            f"invalid_{f.name}": (lambda name=f.name: event | {name: f"{event[name]} !"})
            for f in PATTERNED_FIELDS
        },
    }
    line = json.dumps(event)
    if reason == "oversized_event":
        return line[:-1] + f', "padding": "{"x" * MAX_EVENT_BYTES}"}}'
    if reason == "invalid_encoding":
        return line.encode()[:-2] + b'\xff"}'
    if reason == "malformed_json":
        return line[: len(line) // 2]
    return json.dumps(changes[reason]())


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def example_of(reason: str, valid: dict) -> str | bytes:
    """An event made from ``valid`` that is refused for ``reason`` (given ``valid`` as its
    clock, for ``late_event``; after ``valid`` itself, for ``duplicate_transaction_id``)."""
    if reason not in REASONS:
        raise ValueError(f"no rule {reason!r}: the rules are {', '.join(REASONS)}")
    return _breaking(reason, valid)


def rules_table() -> list[dict[str, str]]:
    """The rules as rows (reason, refused when), in the order they are applied."""
    return [{"reason": r.reason, "refused when": r.refuses} for r in RULES]


def fields_table() -> list[dict[str, str]]:
    """The fields as rows (field, type, required, format)."""
    return [
        {
            "field": f.name,
            "type": f.kind,
            "required": "yes" if f.required else "no",
            "format": f.description,
        }
        for f in FIELDS
    ]
