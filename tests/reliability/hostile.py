"""A corpus of hostile events, and valid ones around them, as the bytes a source delivers."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from workbook import contract, intake, names, simulator
from workbook.simulator import SimulationConfig

DROP = object()  # a field to leave out of the event


def event(number: int, **changes) -> dict:
    base = {
        names.TRANSACTION_ID: f"TX-REL-{number:06d}",
        names.TIMESTAMP: f"2025-01-{1 + number % 28:02d}T{number % 24:02d}:04:05Z",
        names.ACCOUNT_ID: f"ACC{number % 50:06d}",
        names.AMOUNT: round(5 + (number * 7.31) % 900, 2),
        names.CURRENCY: "EUR",
        names.TRANSACTION_TYPE: "purchase",
        names.MERCHANT_ID: f"M{number % 97:06d}",
        names.CATEGORY: "retail",
        names.IS_FLAGGED: False,
    }
    return {k: v for k, v in {**base, **changes}.items() if v is not DROP}


def line(number: int, **changes) -> bytes:
    return json.dumps(event(number, **changes)).encode()


@dataclass(frozen=True)
class Hostile:
    kind: str
    data: bytes  # one line on the file source, one message value on Kafka
    reason: str  # the quarantine reason it must get


def valid_events(first: int, count: int) -> list[bytes]:
    return [line(n) for n in range(first, first + count)]


def corpus(first: int) -> list[Hostile]:
    """Hostile events, each with its own transaction id from ``first`` on (where it has one)."""
    numbers = iter(range(first, first + 1000))

    def bad(kind: str, reason: str, **changes) -> Hostile:
        return Hostile(kind, line(next(numbers), **changes), reason)

    whole = line(next(numbers))
    items = [
        Hostile("not_json", b"this is not json", "malformed_json"),
        Hostile("half_object", b'{"transaction_id": "TX-REL-X", "amount": ', "malformed_json"),
        Hostile("json_array", b"[1, 2, 3]", "malformed_json"),
        Hostile("json_null", b"null", "malformed_json"),
        Hostile("truncated_half", whole[: len(whole) // 2], "malformed_json"),
        Hostile("truncated_last_byte", whole[:-1], "malformed_json"),
        Hostile("control_character", line(next(numbers))[:-2] + b'\x00"}', "malformed_json"),
        *[
            bad(f"missing_{f}", "missing_required_field", **{f: DROP})
            for f in contract.REQUIRED_FIELDS
        ],
        *[
            bad(f"null_{f}", "missing_required_field", **{f: None})
            for f in contract.REQUIRED_FIELDS
        ],
        bad("amount_text", "wrong_type", amount="12.50 EUR"),
        bad("amount_object", "wrong_type", amount={"value": 1}),
        bad("amount_list", "wrong_type", amount=[12.5]),
        bad("amount_bool", "wrong_type", amount=True),
        bad("flag_text", "wrong_type", is_flagged="maybe"),
        bad("amount_zero", "invalid_amount", amount=0),
        bad("amount_minus_zero", "invalid_amount", amount=-0.0),
        bad("amount_negative", "invalid_amount", amount=-12.5),
        # JSON has no NaN or Infinity: Python writes them, the contract refuses them.
        bad("amount_nan", "malformed_json", amount=float("nan")),
        bad("amount_nan_text", "wrong_type", amount="NaN"),
        bad("amount_infinity", "malformed_json", amount=float("inf")),
        bad("amount_minus_infinity", "malformed_json", amount=float("-inf")),
        Hostile(
            "amount_overflows_double",
            line(next(numbers), amount=1.0).replace(b'"amount": 1.0', b'"amount": 1e400'),
            "invalid_amount",
        ),
        bad("amount_absurd", "invalid_amount", amount=1e300),
        bad("amount_over_limit", "invalid_amount", amount=contract.MAX_AMOUNT + 0.01),
        bad("currency_unknown", "unknown_currency", currency="XYZ"),
        bad("currency_lowercase", "unknown_currency", currency="eur"),
        bad("currency_empty", "unknown_currency", currency=""),
        bad("timestamp_word", "invalid_timestamp", timestamp="yesterday"),
        bad("timestamp_feb30", "invalid_timestamp", timestamp="2025-02-30T00:00:00Z"),
        bad("timestamp_no_zone", "invalid_timestamp", timestamp="2025-01-02T03:04:05"),
        bad("timestamp_number", "wrong_type", timestamp=1735787045),
        bad("timestamp_future", "future_timestamp", timestamp="2099-01-01T00:00:00Z"),
        bad("oversized_field", "oversized_event", category="x" * (contract.MAX_EVENT_BYTES + 1)),
        bad("oversized_200kb", "oversized_event", merchant_id="y" * 200_000),
        # Bytes that are not UTF-8: inside a field, Latin-1 text, UTF-16, pure noise.
        Hostile(
            "invalid_utf8_in_field",
            line(next(numbers)).replace(b'"retail"', b'"ret\xff\xfeail"'),
            "invalid_encoding",
        ),
        Hostile(
            "latin1_text",
            json.dumps(event(next(numbers), category="caf\u00e9"), ensure_ascii=False).encode(
                "latin-1"
            ),
            "invalid_encoding",
        ),
        Hostile("utf16", json.dumps(event(next(numbers))).encode("utf-16"), "invalid_encoding"),
        Hostile("noise", bytes(range(128, 256)), "invalid_encoding"),
        # One of the contract's own examples for every rule judged by the event alone.
        *[
            Hostile(
                f"contract_{r}", intake.as_bytes(contract.example_of(r, event(next(numbers)))), r
            )
            for r in contract.STATELESS
        ],
    ]
    return items


def expected_ingestion(config: SimulationConfig) -> tuple[list[str], list[str]]:
    """Transaction ids for raw and record ids (hashes of the lines) for quarantine."""
    valid_ids = simulator.simulate(config)[0][names.TRANSACTION_ID].tolist()
    accounts = simulator.make_accounts(config)
    refused = []
    for i, n in enumerate(simulator._daily_counts(config)):
        day = config.first_day + i
        valid = simulator.split_labels(simulator.simulate_day(config, accounts, day, n))[0]
        refused += [
            hashlib.sha256(intake.as_bytes(text)).hexdigest()
            for _, text in simulator.malformed_events(config, valid, day)
        ]
    return valid_ids, refused
