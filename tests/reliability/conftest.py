"""The reliability suite: what each test measured, summed into one line at the end.

Tests record what they fed and what they found through the ``tally`` fixture; the counts
are written to a results file (``RELIABILITY_RESULTS``, by default
``runs/reliability/results.json``) and the session ends with the summary line:

    reliability: bad_inputs=N quarantined=N faults=N survived=N rows_lost=N rows_duplicated=N
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from workbook.config import REPO_ROOT

RESULTS_FILE = Path(
    os.environ.get("RELIABILITY_RESULTS", REPO_ROOT / "runs" / "reliability" / "results.json")
)
SUMMARY_KEYS = ("bad_inputs", "quarantined", "faults", "survived", "rows_lost", "rows_duplicated")


@dataclass
class Outcome:
    """One fault scenario: rows lost or duplicated, and whether the data came out exact."""

    name: str
    rows_lost: int = 0
    rows_duplicated: int = 0
    compared: bool = False
    survived: bool = False

    def compare(self, expected: Iterable, got: Iterable) -> None:
        """Count keys missing from ``got`` and keys in it more often than expected.

        A key that should not be there at all counts as duplicated: a row too many.
        """
        want, have = Counter(expected), Counter(got)
        self.rows_lost += sum((want - have).values())
        self.rows_duplicated += sum((have - want).values())
        self.compared = True


@dataclass
class Tally:
    bad_inputs: int = 0
    quarantined: int = 0
    scenarios: list[Outcome] = field(default_factory=list)
    bad_input_runs: list[dict] = field(default_factory=list)

    def bad_input(self, name: str, fed: int, quarantined: int) -> None:
        """``fed`` hostile events went in; ``quarantined`` of them landed there with a reason."""
        self.bad_inputs += fed
        self.quarantined += quarantined
        self.bad_input_runs.append({"name": name, "fed": fed, "quarantined": quarantined})
        self.save()

    @contextmanager
    def fault(self, name: str):
        """Record one injected fault; it survived if the block ends with exact data.

        The block must call ``outcome.compare`` at least once; an exception inside it (a
        crash, a failed assertion) leaves the scenario counted as not survived.
        """
        outcome = Outcome(name)
        self.scenarios.append(outcome)
        try:
            yield outcome
            assert outcome.compared, f"{name}: nothing was compared"
            assert outcome.rows_lost == 0 and outcome.rows_duplicated == 0, (
                f"{name}: {outcome.rows_lost} rows lost, {outcome.rows_duplicated} duplicated"
            )
            outcome.survived = True
        finally:
            self.save()

    def summary(self) -> dict[str, int]:
        return {
            "bad_inputs": self.bad_inputs,
            "quarantined": self.quarantined,
            "faults": len(self.scenarios),
            "survived": sum(o.survived for o in self.scenarios),
            "rows_lost": sum(o.rows_lost for o in self.scenarios),
            "rows_duplicated": sum(o.rows_duplicated for o in self.scenarios),
        }

    def save(self) -> None:
        RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
        detail = {
            "summary": self.summary(),
            "bad_input_runs": self.bad_input_runs,
            "scenarios": [asdict(o) for o in self.scenarios],
        }
        RESULTS_FILE.write_text(json.dumps(detail, indent=2) + "\n")


_TALLY = Tally()


@pytest.fixture(scope="session")
def tally() -> Tally:
    return _TALLY


def summary_line(counts: dict[str, int]) -> str:
    return "reliability: " + " ".join(f"{key}={counts[key]}" for key in SUMMARY_KEYS)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Last of all, after pytest's own totals: the one line a CI log is searched for."""
    _TALLY.save()
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    write = reporter.write_line if reporter else print
    write(f"results in {RESULTS_FILE}")
    write(summary_line(_TALLY.summary()))


# -- the stack ----------------------------------------------------------------------------


@pytest.fixture()
def stack_profile(monkeypatch):
    """The stack profile for this test (workers inherit it); skips when S3 or Kafka is down."""
    from workbook import services

    monkeypatch.setenv("WORKBOOK_PROFILE", "stack")
    for name in ("s3", "kafka"):
        try:
            services.require(name)
        except (services.ServiceUnavailableError, RuntimeError) as error:
            pytest.skip(f"the stack is not running ({error})")


@pytest.fixture()
def s3_prefix(stack_profile):
    """A folder of the test's own in the raw bucket, deleted afterwards."""
    from minio.deleteobjects import DeleteObject

    from workbook import names, services

    bucket = names.RAW_TABLE[0]
    prefix = f"reliability-{uuid.uuid4().hex[:12]}"
    yield f"s3a://{bucket}/{prefix}"
    client = services.s3_client()
    objects = client.list_objects(bucket, prefix=f"{prefix}/", recursive=True)
    list(client.remove_objects(bucket, [DeleteObject(o.object_name) for o in objects]))


@pytest.fixture()
def kafka_topic(stack_profile):
    """A topic of the test's own (three partitions, like the workbook's), deleted afterwards."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from workbook import intake
    from workbook.config import required

    admin = AdminClient(
        {
            "bootstrap.servers": required("KAFKA_BOOTSTRAP_SERVERS"),
            "logger": intake.client_log("kafka-admin"),
        }
    )
    topic = f"reliability-{uuid.uuid4().hex[:12]}"
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result()
    yield topic
    admin.delete_topics([topic])[topic].result()
