"""Hostile events through ingestion: each lands in quarantine with its reason, valid ones once.

The same corpus goes through the file source (local profile, in this process) and through
a Kafka topic into tables on S3 (stack profile, in a worker process).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import hostile
from kafka_producer import produce
from processes import read_tables, run_worker

from workbook import ingest, lakehouse, launcher, names, sources

REPLACEMENT = "\ufffd"  # what make_valid_utf8 puts in place of bytes that are not UTF-8
DUPLICATE = "duplicate_transaction_id"
VALID_PER_BATCH = 300


def deliveries() -> tuple[list[list[bytes]], list[hostile.Hostile], list[tuple[bytes, bytes]]]:
    """Three deliveries (files, or rounds of messages), the hostile events among them, and
    pairs that share a transaction id within one delivery (exactly one of each must win).
    """
    corpus = hostile.corpus(first=10_000)
    pairs = [(hostile.line(n), hostile.line(n, amount=1.0)) for n in range(5)]
    first = hostile.valid_events(0, VALID_PER_BATCH) + [b for _, b in pairs]
    first += [h.data for h in corpus]
    # Sent again in a later delivery: exact copies, then a replay of part of the first one.
    again = [hostile.Hostile("duplicate_later", hostile.line(n), DUPLICATE) for n in range(10, 20)]
    replayed = [hostile.Hostile("replay", hostile.line(n), DUPLICATE) for n in range(20, 70)]
    second = hostile.valid_events(VALID_PER_BATCH, VALID_PER_BATCH) + [h.data for h in again]
    third = [h.data for h in replayed]
    return [first, second, third], [*corpus, *again, *replayed], pairs


def expected_valid_ids() -> list[str]:
    return [f"TX-REL-{n:06d}" for n in range(2 * VALID_PER_BATCH)]


def check(raw: list[dict], quarantine: list[dict], corpus, pairs, tally, name: str) -> None:
    """Every hostile event in quarantine with its reason; every valid id in raw exactly once."""
    assert all(row[names.REASON] for row in quarantine), "a quarantined row without a reason"
    stored = Counter((row[names.RAW_VALUE], row[names.REASON]) for row in quarantine)
    missing = []
    for item in corpus:
        try:
            key = (item.data.decode("utf-8"), item.reason)
        except UnicodeDecodeError:  # stored as decoded, with U+FFFD for the bad bytes
            key = next(
                (k for k in stored if k[1] == item.reason and REPLACEMENT in k[0] and stored[k]),
                None,
            )
        if key is not None and stored[key] > 0:
            stored[key] -= 1
        else:
            missing.append(item.kind)
    pairs_refused = 0
    for kept_first, kept_second in pairs:
        copies = [(b.decode(), DUPLICATE) for b in (kept_first, kept_second)]
        if sum(stored[c] for c in copies) == 1:
            pairs_refused += 1
            for c in copies:
                stored[c] = 0
    tally.bad_input(
        name, fed=len(corpus) + len(pairs), quarantined=len(corpus) - len(missing) + pairs_refused
    )
    assert missing == [], f"not quarantined with the expected reason: {missing}"
    assert pairs_refused == len(pairs)
    assert +stored == Counter(), f"unexpected quarantine rows: {list(+stored)[:3]}"
    raw_ids = Counter(row[names.TRANSACTION_ID] for row in raw)
    assert raw_ids == Counter(expected_valid_ids())
    # Nothing in raw carries a replacement character: altered text never passes.
    assert not [r for r in raw if any(REPLACEMENT in str(v) for v in r.values())]


def test_hostile_files_on_the_local_profile(spark, tmp_path: Path, tally):
    batches, corpus, pairs = deliveries()
    landing, root = tmp_path / "landing", tmp_path
    landing.mkdir()
    raw, quarantine = str(root / "raw"), str(root / "quarantine")

    def ingest_landed() -> None:
        events = sources.landed_files_stream(spark, str(landing), max_files_per_trigger=1)
        query = ingest.start_ingest(spark, events, raw, quarantine, str(root / "checkpoint"))
        query.awaitTermination()  # an exception here is ingestion crashing on input
        assert query.exception() is None

    for i, lines in enumerate(batches):
        (landing / f"delivery-{i}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        ingest_landed()
    tables = read_tables({"raw": raw, "quarantine": quarantine}, tmp_path, spark)
    check(tables["raw"], tables["quarantine"], corpus, pairs, tally, "files (local)")
    # Running again over the same input changes nothing.
    ingest_landed()
    again = read_tables({"raw": raw, "quarantine": quarantine}, tmp_path, spark)
    assert {k: sorted(map(repr, v)) for k, v in again.items()} == {
        k: sorted(map(repr, v)) for k, v in tables.items()
    }


def test_hostile_messages_on_the_stack(s3_prefix, kafka_topic, tmp_path: Path, tally):
    """The same deliveries as Kafka messages, ingested into tables on S3 by a worker."""
    batches, corpus, pairs = deliveries()
    task = {
        "job": "ingest",
        "topic": kafka_topic,
        "raw": f"{s3_prefix}/raw",
        "quarantine": f"{s3_prefix}/quarantine",
        "checkpoint": f"{s3_prefix}/checkpoint",
    }
    # One run: at most 400 messages per micro-batch, so the copies and the replay at the
    # end of the topic reach ingestion in later micro-batches than their originals.
    for lines in batches:
        assert produce(kafka_topic, lines) == []
    run_worker(task, tmp_path / "worker.log")
    tables = read_tables({"raw": task["raw"], "quarantine": task["quarantine"]}, tmp_path)
    check(tables["raw"], tables["quarantine"], corpus, pairs, tally, "Kafka messages (stack)")


def test_hostile_events_over_http(tally):
    """The corpus sent to ``POST /transactions``: each event refused with its reason, in one
    batch, or, when it would break the batch's JSON, as a body of its own (a clear 4xx, or a
    202 that accepts nothing); no 500, and nothing refused reaches the landing zone."""
    corpus = hostile.corpus(first=20_000)
    in_batch, alone = [], []
    for item in corpus:
        try:
            json.loads(item.data.decode("utf-8"))  # Python reads NaN and repeated keys too
            in_batch.append(item)
        except ValueError:
            alone.append(item)
    landing = Path(lakehouse.location(names.LANDING_ZONE))
    before = sorted(landing.glob("*")) if landing.exists() else []
    service = launcher.start_service()
    try:
        body = b"[" + b",".join(item.data for item in in_batch) + b"]"
        status, answer = _post(service.url, body)
        answers = [_post(service.url, item.data) for item in alone]
    finally:
        service.stop()
    assert status == 202, answer
    reasons = [e["reason"] for e in answer["events"]]
    refused_alone = [s in (400, 422) or (s == 202 and a["accepted"] == 0) for s, a in answers]
    tally.bad_input(
        "HTTP POST /transactions (local)",
        fed=len(corpus),
        quarantined=sum(r == i.reason for r, i in zip(reasons, in_batch, strict=True))
        + sum(refused_alone),
    )
    assert status == 202 and answer["accepted"] == 0
    assert reasons == [item.reason for item in in_batch]
    assert all(refused_alone), answers
    after = sorted(landing.glob("*")) if landing.exists() else []
    assert after == before, "a refused event reached the landing zone"


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/transactions", body, {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)
