"""Lineage: where every table, model and prediction came from, as OpenLineage events.

Spark's jobs report themselves: OpenLineage's listener, on every session ``get_spark``
makes, sends one event per action with the datasets it read and wrote. The edges Spark
cannot see are recorded from Python with OpenLineage's client: the model version a training
run registered, the model a scoring stream uses, the online store, and tables written from
rows the driver computed (labels, monitoring results, decisions).

Events go to JSON-lines files in ``<lakehouse>/_lineage/``, one per process (the file
transport appends). With ``LINEAGE_URL`` set they also go over HTTP to Marquez or
OpenMetadata (``LINEAGE_ENDPOINT``, ``LINEAGE_API_KEY``); ``OPENLINEAGE_DISABLED=true``
turns both off. (Not OpenLineage's own ``OPENLINEAGE_URL``: given it, the Python client adds
an HTTP transport of its own to the one configured here, and writes it into the environment
that Spark's JVM inherits, so each event would be sent twice.) ``graph`` reads the files
back into a graph of the workbook's datasets.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import sys
import textwrap
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from workbook import names
from workbook.config import Settings, get_settings

SPARK_PACKAGE = "io.openlineage:openlineage-spark_2.13:1.53.0"
NAMESPACE = "workbook"  # the jobs' namespace, Spark's and Python's
MODELS = "mlflow"  # the registered versions' namespace: "<model>/<version>" in it
PRODUCER = "https://github.com/OpenLineage/OpenLineage/tree/1.53.0/client/python"
FOLDER = "_lineage"

TABLES = (
    names.RAW_TABLE,
    names.QUARANTINE_TABLE,
    names.LABELS_TABLE,
    names.FEATURES_TABLE,
    names.PREDICTIONS_TABLE,
    names.MONITORING_TABLE,
    names.DECISIONS_TABLE,
)
EVENTS = "incoming events"  # the landing zone (local) or the topic (stack), as the graph names it
GROUND_TRUTH_LABEL = "fraud outcomes"
ONLINE_LABEL = f"online {names.ONLINE_FEATURES_TABLE}"


class Dataset(NamedTuple):
    """A dataset as OpenLineage names it: a namespace and a name inside it."""

    namespace: str
    name: str


# Where the labels come from: the simulator stands in for the cases a fraud team closes.
GROUND_TRUTH = Dataset("simulator", "fraud_outcomes")

log = logging.getLogger(__name__)


def disabled() -> bool:
    return os.environ.get("OPENLINEAGE_DISABLED", "").lower() in ("1", "true")


def folder(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).lakehouse / FOLDER


def server_url() -> str | None:
    """``LINEAGE_URL``, if set and its server answers; else events go to the files only."""
    url = os.environ.get("LINEAGE_URL")
    return _answering(url) if url else None


@functools.cache
def _answering(url: str) -> str | None:
    """``url`` if its server accepts a connection; else ``None``, said once per process."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=2).close()
        return url
    except OSError as error:
        log.warning(
            "The lineage server at LINEAGE_URL=%s does not answer (%s): events go to %s only. "
            "Start the server (Marquez, OpenMetadata), or unset LINEAGE_URL.",
            url,
            error,
            folder(),
        )
        return None


def spark_conf(settings: Settings, app_name: str) -> dict[str, str]:
    """The listener's settings for a new session: events to a file of this process's own."""
    if disabled():
        return {}
    events = folder(settings) / f"spark-{app_name}-{os.getpid()}.jsonl"
    conf = {
        "spark.extraListeners": "io.openlineage.spark.agent.OpenLineageSparkListener",
        "spark.openlineage.namespace": NAMESPACE,
        # Jobs on RDDs are Delta's and MLlib's internals: no table is read or written there.
        "spark.openlineage.filter.rddEventsDisabled": "true",
    }
    if not (url := server_url()):
        return conf | {
            "spark.openlineage.transport.type": "file",
            "spark.openlineage.transport.location": str(events),
        }
    http = "spark.openlineage.transport.transports.http"
    conf |= {
        "spark.openlineage.transport.type": "composite",
        "spark.openlineage.transport.continueOnFailure": "true",
        "spark.openlineage.transport.transports.file.type": "file",
        "spark.openlineage.transport.transports.file.location": str(events),
        f"{http}.type": "http",
        f"{http}.url": url,
        f"{http}.endpoint": os.environ.get("LINEAGE_ENDPOINT", "/api/v1/lineage"),
    }
    if key := os.environ.get("LINEAGE_API_KEY"):
        conf |= {f"{http}.auth.type": "api_key", f"{http}.auth.apiKey": key}
        # Spark's UI shows settings unless their name matches this (its default, and apiKey).
        conf["spark.redaction.regex"] = "(?i)secret|password|token|access[.]?key|apikey"
    return conf


# -- recording what Spark cannot see ---------------------------------------------------------


def at(location: str) -> Dataset:
    """The dataset at a table's location (a local path or ``s3a://bucket/key``), named as
    Spark's listener names it."""
    if location.startswith("s3a://"):
        bucket, _, key = location.removeprefix("s3a://").partition("/")
        return Dataset(f"s3://{bucket}", key)
    return Dataset("file", str(Path(location).resolve()))


def table(location: names.Location) -> Dataset:
    return at(get_settings().location(location))


def postgres_table(conn, table_name: str) -> Dataset:
    """A PostgreSQL table, named as OpenLineage names it: by server, database and schema."""
    info = conn.info
    host = "localhost" if info.host.startswith("/") else info.host  # a Unix socket's folder
    return Dataset(f"postgres://{host}:{info.port}", f"{info.dbname}.public.{table_name}")


def record(
    job: str, inputs: Iterable[Dataset], outputs: Iterable[Dataset], run_id: str | None = None
) -> None:
    """One completed run of ``job`` that read ``inputs`` and wrote ``outputs``.

    The job is named after the running application (the notebook's Spark session), as
    Spark's own events are. ``run_id``: the run's own id, when it has one (an MLflow run's:
    both are UUIDs).
    """
    if disabled():
        return
    from openlineage.client import OpenLineageClient
    from openlineage.client import event_v2 as ol
    from openlineage.client.uuid import generate_new_uuid

    event = ol.RunEvent(
        eventType=ol.RunState.COMPLETE,
        eventTime=datetime.now(UTC).isoformat(),
        run=ol.Run(runId=str(uuid.UUID(run_id) if run_id else generate_new_uuid())),
        job=ol.Job(namespace=NAMESPACE, name=f"{_application()}.{job}"),
        producer=PRODUCER,
        inputs=[ol.InputDataset(d.namespace, d.name) for d in inputs],
        outputs=[ol.OutputDataset(d.namespace, d.name) for d in outputs],
    )
    OpenLineageClient(config={"transport": _python_transport()}).emit(event)


def _application() -> str:
    """The active Spark session's application name, else this program's."""
    if "pyspark.sql" in sys.modules:
        from pyspark.sql import SparkSession

        if (active := SparkSession.getActiveSession()) is not None:
            return active.conf.get("spark.app.name").replace("-", "_")
    return (Path(sys.argv[0]).stem or "python").replace("-", "_")


def _python_transport() -> dict:
    path = folder() / f"python-{os.getpid()}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    to_file = {"type": "file", "log_file_path": str(path), "append": True}
    if not (url := server_url()):
        return to_file
    http = {
        "type": "http",
        "url": url,
        "endpoint": os.environ.get("LINEAGE_ENDPOINT", "/api/v1/lineage"),
        "retry": {"total": 2},  # not OpenLineage's five: a notebook waits for each event
    }
    if key := os.environ.get("LINEAGE_API_KEY"):
        http["auth"] = {"type": "api_key", "apiKey": key}
    return {"type": "composite", "transports": {"file": to_file, "http": http}}


# -- reading the events back -----------------------------------------------------------------


@dataclass
class Run:
    """One run of a job, its events merged: a run's inputs may come in one event only."""

    run_id: str
    job: str
    producer: str
    inputs: set[Dataset] = field(default_factory=set)
    outputs: set[Dataset] = field(default_factory=set)

    @property
    def application(self) -> str:
        return self.job.split(".", 1)[0]

    @property
    def from_spark(self) -> bool:
        return "/integration/spark" in self.producer


def read_runs(events_folder: Path) -> tuple[list[Run], int]:
    """Every run recorded under ``events_folder``, and how many lines could not be read (the
    last line of a process killed while writing)."""
    runs: dict[str, Run] = {}
    unreadable = 0
    for path in sorted(events_folder.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                unreadable += 1
                continue
            run_id = event["run"]["runId"]
            run = runs.setdefault(run_id, Run(run_id, event["job"]["name"], event["producer"]))
            run.inputs |= {Dataset(d["namespace"], d["name"]) for d in event.get("inputs", [])}
            run.outputs |= {Dataset(d["namespace"], d["name"]) for d in event.get("outputs", [])}
    return list(runs.values()), unreadable


def label(dataset: Dataset, settings: Settings) -> str | None:
    """The graph's name for one of the workbook's datasets; ``None`` for any other (a Delta
    log, a model's files, a staging table): a detail of the job that touched it."""
    namespace, name = dataset
    if namespace == "file":
        try:
            path = str(Path(name).relative_to(settings.lakehouse))
        except ValueError:
            return None
    elif namespace.startswith("s3://"):
        path = f"{namespace.removeprefix('s3://')}/{name}"
    elif namespace.startswith("kafka://"):
        return EVENTS if name == names.TRANSACTIONS_TOPIC else None
    elif namespace.startswith("postgres://"):
        return ONLINE_LABEL if name.endswith(f".{names.ONLINE_FEATURES_TABLE}") else None
    elif dataset == GROUND_TRUTH:
        return GROUND_TRUTH_LABEL
    elif namespace == MODELS:
        return f"model v{name.rpartition('/')[2]}"
    else:
        return None
    landing = "/".join(names.LANDING_ZONE)
    if path == landing or path.startswith(f"{landing}/"):
        return EVENTS
    return next((t.name for t in TABLES if path == "/".join(t)), None)


@dataclass
class Lineage:
    """The workbook's datasets and what each was made from, by which applications."""

    inputs: dict[str, set[str]]  # dataset -> the datasets it was made from
    writers: dict[str, set[str]]  # dataset -> the applications that wrote it
    runs: list[Run]
    unreadable: int = 0
    training_runs: dict[str, str] = field(default_factory=dict)  # model version -> MLflow run

    @property
    def datasets(self) -> list[str]:
        """Every dataset, sources first, each after everything it was made from."""
        found = set(self.inputs) | {i for ins in self.inputs.values() for i in ins}
        return sorted(found, key=lambda d: (self.depth(d), d))

    def depth(self, dataset: str, seen: frozenset = frozenset()) -> int:
        made_from = self.inputs.get(dataset, set()) - seen
        return 1 + max((self.depth(d, seen | {dataset}) for d in made_from), default=-1)

    def describe(self) -> str:
        """A line per dataset that was written: what it was made from, and by whom."""
        lines = [
            f"{d} <- {', '.join(sorted(self.inputs[d])) or 'nothing recorded'}"
            f" ({', '.join(sorted(self.writers[d]))}{self.trained_by(d, '; training run ')})"
            for d in self.datasets
            if d in self.inputs
        ]
        if self.unreadable:
            lines.append(f"{self.unreadable} event lines could not be read (a process cut short)")
        if not lines:
            off = " (OPENLINEAGE_DISABLED=true)" if disabled() else ""
            lines.append(f"No lineage recorded{off}: run the notebooks with lineage on.")
        return "\n".join(lines)

    def trained_by(self, dataset: str, before: str, length: int = 32) -> str:
        """``before`` and the id of the training run that made a model version, else ""."""
        run = self.training_runs.get(dataset)
        return f"{before}{run[:length]}" if run else ""


def graph(lakehouse: Path | None = None, settings: Settings | None = None) -> Lineage:
    """The lineage recorded under ``lakehouse`` (the profile's by default)."""
    settings = settings or get_settings()
    runs, unreadable = read_runs((lakehouse or settings.lakehouse) / FOLDER)
    inputs: dict[str, set[str]] = defaultdict(set)
    writers: dict[str, set[str]] = defaultdict(set)
    training_runs = {}
    for run in runs:
        read = {label(d, settings) for d in run.inputs} - {None}
        for output in {label(d, settings) for d in run.outputs} - {None}:
            # A job that only reads and writes back the same table (a MERGE's own target,
            # a read the listener reports with its table) adds no edge.
            if read - {output} or not run.inputs:
                inputs[output] |= read - {output}
                writers[output].add(run.application)
                if _kind(output) == "model":  # recorded with its MLflow run's id
                    training_runs[output] = run.run_id.replace("-", "")
    return Lineage(dict(inputs), dict(writers), runs, unreadable, training_runs)


# -- drawing ---------------------------------------------------------------------------------

COLOURS = {"source": "#f2d7a6", "table": "#b9d6f2", "model": "#c9e7c0", "online": "#e3c8ef"}


def _kind(dataset: str) -> str:
    if dataset in (EVENTS, GROUND_TRUTH_LABEL):
        return "source"
    if dataset.startswith("model v"):
        return "model"
    return "online" if dataset == ONLINE_LABEL else "table"


def draw(lineage: Lineage, ax) -> None:
    """The datasets in columns by depth, sources on the left, an arrow from each input.

    Within a column, a dataset sits level with the mean height of its inputs, and a source
    with that of what was made from it (fewer crossing arrows).
    """
    ax.axis("off")
    if not lineage.datasets:
        ax.text(0.5, 0.5, "no lineage recorded", ha="center", transform=ax.transAxes)
        return
    columns: dict[int, list[str]] = defaultdict(list)
    for dataset in lineage.datasets:
        columns[lineage.depth(dataset)].append(dataset)
    height: dict[str, float] = {}
    for depth in sorted(columns):
        column = columns[depth]
        if depth:
            column.sort(
                key=lambda d: sum(height[i] for i in lineage.inputs[d]) / len(lineage.inputs[d])
            )
        height |= {d: (len(column) - 1) / 2 - row for row, d in enumerate(column)}
    # The sources then follow what was made from them.
    made = {s: [height[d] for d, ins in lineage.inputs.items() if s in ins] for s in columns[0]}
    columns[0].sort(key=lambda s: -sum(made[s]) / max(len(made[s]), 1))
    height |= {s: (len(columns[0]) - 1) / 2 - row for row, s in enumerate(columns[0])}
    boxes = {
        d: ax.text(
            depth,
            height[d],
            textwrap.fill(d.replace("_", " "), 18) + lineage.trained_by(d, "\ntraining run ", 8),
            ha="center",
            va="center",
            fontsize=8,
            bbox={"boxstyle": "round", "facecolor": COLOURS[_kind(d)], "edgecolor": "#777"},
        )
        for depth, column in columns.items()
        for d in column
    }
    # Each arrow from the right edge of the source's box to the left edge of the target's.
    for target, sources in lineage.inputs.items():
        for source in sources:
            ax.annotate(
                "",
                xy=(0, 0.5),
                xycoords=boxes[target],
                xytext=(1, 0.5),
                textcoords=boxes[source],
                arrowprops={"arrowstyle": "->", "color": "#666", "shrinkA": 2, "shrinkB": 2},
            )
    half = max(len(c) for c in columns.values()) / 2
    ax.set_xlim(-0.5, max(columns) + 0.5)
    ax.set_ylim(-half, half)


def main() -> None:
    """Print the lineage of the profile's lakehouse and draw it beside the events."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lineage = graph()
    if not lineage.inputs:
        raise SystemExit(f"No lineage in {folder()}: run the notebooks first (make run).")
    print(lineage.describe())
    fig, ax = plt.subplots(figsize=(12, 4.5))
    draw(lineage, ax)
    fig.savefig(picture := folder() / "graph.png", bbox_inches="tight", dpi=120)
    print(f"drawn in {picture}")


if __name__ == "__main__":
    main()
