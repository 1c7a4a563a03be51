"""Days of bad luck after the smoke run's loop, run by ``test_loop_faults`` in its own process.

Day 1: every event malformed, and the labels due that day never come. Day 2: no events at
all. Days 3 and 4: ordinary days on which a challenger is called for. On day 3 none can be
trained: the days it would be compared on hold no labelled fraud (lost labels, two days
without data). On day 4 one is trained on a longer holdout and cannot win (the margin is
out of reach). Day 5 brings, besides its own events, a valid event of day 4 that arrives
late. After each day it notes what a caller would see: the aliases, the online store and
the report; at the end, day 4's challenger's drift reference as kept at its training and
as its recorded test rows give it again. Writes them as JSON to the file named by its one
argument.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, replace
from datetime import timedelta
from pathlib import Path

from psycopg2 import sql

sys.path.insert(0, str(Path(__file__).parents[1]))  # run as a script: tests/ for the size
from quick_workbook import DRIFT_FROM_DAY, LABEL_DELAY  # noqa: E402

from workbook import intake, loop, names, registry, simulator, store
from workbook.spark import get_spark


def malformed_lines(config, day) -> list[str | bytes]:
    """The simulator's malformed events of ``day``; its duplicates are copies of valid events
    that are never sent here, so they would be valid: left out."""
    index = config.index_of(day)
    valid, _ = simulator.simulate(config.one_day(index))
    hostile = simulator.malformed_events(config.one_day(index), valid, index)
    return [line for kind, line in hostile if kind != "duplicate_transaction_id"]


def valid_lines(config, day) -> list[str]:
    """The simulated valid events of ``day``, as they would arrive."""
    valid, _ = simulator.simulate(config.one_day(config.index_of(day)))
    return [json.dumps(event) for event in valid.to_dict("records")]


def late_event(config, day) -> dict:
    """A valid event of ``day`` that the platform has not seen: one of the day's, new id."""
    valid, _ = simulator.simulate(config.one_day(config.index_of(day)))
    event = valid.to_dict("records")[0]
    return event | {names.TRANSACTION_ID: f"{event[names.TRANSACTION_ID]}-late"}


def observed() -> dict:
    """What a client of the platform sees: the aliases and the online store."""
    query = sql.SQL("SELECT count(*), min({d}), max({d}) FROM {t}").format(
        d=sql.Identifier(names.FEATURE_DATE), t=sql.Identifier(store.TABLE)
    )
    conn = store.connect(store.READER)
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            count, oldest, newest = cur.fetchone()
    finally:
        conn.close()
    aliases = {}
    for alias in (names.CHAMPION, names.CHALLENGER):
        try:
            aliases[alias] = str(registry.alias_version(alias).version)
        except registry.AliasNotFoundError:
            aliases[alias] = None
    return {"aliases": aliases, "online": [count, str(oldest), str(newest)]}


def challenger_reference(spark, day: dict) -> dict:
    """The drift reference kept when the day's challenger was trained, and the one its
    recorded test rows give when computed again."""
    model, loaded = registry.load_spark_model(spark, version=day["report"]["challenger"])
    kept = loop.reference(spark, model, loaded)
    again = loop.binned(model, loop.tested_rows(spark, loaded.metadata))
    return {"kept": json.loads(kept.to_json()), "again": json.loads(again.to_json())}


def main(out: str) -> None:
    spark = get_spark("loop-faults")
    start = loop.next_day(spark)
    days = [start + timedelta(days=k) for k in range(5)]
    settings = loop.LoopSettings(
        label_delay_days=LABEL_DELAY, drift=simulator.DriftScenario(DRIFT_FROM_DAY)
    )
    config = loop.world(spark, settings)
    bad = malformed_lines(config, days[0])
    lost = days[0] - timedelta(days=LABEL_DELAY)
    # Any two inputs over a PSI of 0 call for a challenger, which no PR-AUC gain can promote.
    hopeless = replace(settings, psi_alert=0.0, retrain_every_days=1, margin=1.0)
    late = late_event(config, days[3])
    plan = [
        (days[0], replace(settings, lost_labels=(lost,)), bad),
        (days[1], settings, []),
        (days[2], hopeless, None),
        (days[3], replace(hopeless, holdout_days=6), None),  # back past the lost labels
        # No challenger is called for on day 5: the day is about the late event alone.
        (
            days[4],
            replace(settings, psi_alert=10.0, quality_drop=1.0),
            [*valid_lines(config, days[4]), json.dumps(late)],
        ),
    ]
    records = [hashlib.sha256(intake.as_bytes(line)).hexdigest() for line in bad]
    found = {"before": observed(), "malformed_records": records, "lost_labels": str(lost)}
    found["late_event"] = late
    found["days"] = []
    for day, day_settings, events in plan:
        report = loop.run_day(spark, day, day_settings, events=events)
        found["days"].append({"report": {**asdict(report), "day": str(day)}, **observed()})
    found["challenger_reference"] = challenger_reference(spark, found["days"][3])
    spark.stop()
    with open(out, "w") as file:
        json.dump(found, file, default=str, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
