"""Experiment tracking and the model registry (MLflow): the one place that knows them.

Every training run is an MLflow run of the workbook's experiment: its parameters, the Delta
tables it read (each at its version), its metrics and the model's baseline's, plots, the
model exported for scoring without Spark, and the Spark pipeline. A run registers a version
of ``financial_fraud_model``; the alias ``champion`` names the version in use. Consumers
(streaming scoring, the scoring service) load a model by alias, never by a path.

Where MLflow keeps things depends on the profile, nothing else does:
- local: a SQLite store in ``<lakehouse>/_mlflow`` and artifacts in the lakehouse's models
  bucket folder; no server, nothing to start (``make reset`` removes both);
- stack: the tracking server at ``MLFLOW_TRACKING_URI`` (PostgreSQL behind it), which keeps
  the artifacts in ``models-bucket`` and serves them, so clients need no S3 keys.

Writing (runs, versions, aliases) and loading the Spark pipeline go through MLflow's client.
Reading which version carries an alias, and that version's numpy export, does not: it is
two or three read-only queries, asked of the server's REST API on the stack and of the
SQLite store locally. Importing MLflow takes about two seconds on two cores; the scoring
service, which only reads, starts without it (``tests/unit/test_registry.py`` checks that
both ways give the same answer).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path

from workbook import lakehouse, lineage, names, scoring, services
from workbook.config import get_settings, required

MODEL_NAME = names.MODEL.name
FINGERPRINT_TAG = "workbook.fingerprint"
METADATA_FILE = "metadata.json"  # the run's record: features, table versions, split, metrics
SCORING_FILE = f"scoring/{scoring.ARTIFACT_FILE}"
MODEL_PATH = "model"  # the Spark pipeline, within the run's artifacts
STAGING_FOLDER = "_mlflow_staging"  # in the lakehouse: where Spark saves a model for MLflow


class AliasNotFoundError(LookupError):
    """No version of the model carries the alias asked for."""


def tracking_uri() -> str:
    """The tracking store (and registry) of the active profile."""
    settings = get_settings()
    if settings.profile == "stack":
        return required("MLFLOW_TRACKING_URI")
    folder = settings.lakehouse / "_mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def _artifact_root() -> str | None:
    """Locally, artifacts live in the models bucket's folder; on the stack the server decides."""
    if get_settings().profile == "stack":
        return None
    return Path(lakehouse.location(names.MODEL)).as_uri()


def _quiet_progress() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _mlflow():
    _quiet_progress()
    with warnings.catch_warnings():
        # MLflow imports tqdm.auto (now or at its first download), which warns in a notebook
        # without ipywidgets; MLflow's bars are off, so it is imported here, quietly.
        warnings.filterwarnings("ignore", "IProgress not found")
        import mlflow
        import tqdm.auto  # noqa: F401
    # Store migrations and registrations log at INFO; notebooks show what matters themselves.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return mlflow


def check_available() -> None:
    """On the stack, raise a clear error unless the tracking server accepts connections."""
    if get_settings().profile == "stack":
        services.require("mlflow")


_opening: threading.Thread | None = None


def open_in_background() -> None:
    """Import MLflow and open its store in a thread, while the caller goes on (03 trains).

    Both take seconds: MLflow's import about two, the SQL store's about two more, and on a
    fresh lakehouse the store's tables are created then. ``client`` waits for the thread, and
    raises any error itself. Call it once Spark has started: a process started while another
    thread changes the environment can fail to start (``OSError: Bad address``).
    """
    global _opening
    _quiet_progress()  # the one change MLflow's import makes to the environment, made here
    if _opening is None:
        _opening = threading.Thread(target=_open_quietly, name="mlflow-open", daemon=True)
        _opening.start()


def _open_quietly() -> None:
    with contextlib.suppress(Exception):  # client() reports it, in the caller's thread
        experiment_id(_open_client())
    with contextlib.suppress(Exception):  # an optimisation only, of a private cache
        # Logging a model checks its pip requirements against the installed packages, from
        # a map of every package's files that MLflow builds once per process: about 2 s.
        from mlflow.utils.requirements_utils import _init_modules_to_packages_map

        _init_modules_to_packages_map()


def client():
    """An ``MlflowClient`` on the profile's store, after checking that it answers."""
    if _opening is not None and _opening is not threading.current_thread():
        _opening.join()
    return _open_client()


def _open_client():
    check_available()
    uri = tracking_uri()
    mlflow = _mlflow()
    mlflow.set_tracking_uri(uri)  # for the fluent API (runs, artifacts) as well
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(mlflow_client=None) -> str:
    """The workbook's experiment, created on first use."""
    mlflow_client = mlflow_client or client()
    found = mlflow_client.get_experiment_by_name(names.EXPERIMENT)
    if found is not None:
        return found.experiment_id
    return mlflow_client.create_experiment(names.EXPERIMENT, artifact_location=_artifact_root())


def location_shown() -> str:
    """Where the registry is, as a notebook shows it (no host, no credentials)."""
    if get_settings().profile == "stack":
        return "the MLflow tracking server (MLFLOW_TRACKING_URI)"
    return "sqlite:///" + lakehouse.shown(tracking_uri().removeprefix("sqlite:///"))


# -- recording a training run ---------------------------------------------------------------


def fingerprint(parameters: dict, table_versions: dict[str, int]) -> str:
    """What a model is a function of: its parameters and the table versions it read."""
    canonical = json.dumps(
        {"parameters": parameters, "table_versions": table_versions},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrainingRun:
    run_id: str
    fingerprint: str
    url: str  # where to open it: the run's page, or its folder locally


def _table_dataset(spark, table: names.Location, version: int):
    """A Delta table at one version, as an MLflow dataset input."""
    _mlflow()
    from mlflow.data.delta_dataset_source import DeltaDatasetSource
    from mlflow.data.spark_dataset import SparkDataset

    class DeltaTableAtVersion(SparkDataset):
        @property
        def profile(self):
            return None  # MLflow counts rows with Python on the executors; not worth it here

    path = lakehouse.location(table)
    frame = lakehouse.read_table(spark, table, version)
    source = DeltaDatasetSource(path=path, delta_table_version=version)
    # The digest names the version: MLflow's source leaves version 0 out.
    return DeltaTableAtVersion(
        df=frame, source=source, name=table.name, digest=f"{table.name}@v{version}"
    )


def log_training_run(
    spark,
    model,
    *,
    parameters: dict,
    metadata: dict,
    input_example,
    figures: dict | None = None,
) -> TrainingRun:
    """Record one training run: everything a reader needs to trust or reproduce the model.

    ``metadata`` is ``train.model_metadata``: its table versions become the run's dataset
    inputs, its metrics the run's metrics (the model's and the amount rule's), and it is
    kept whole as ``metadata.json``. ``input_example`` (a few rows of the model's inputs,
    pandas) gives the logged pipeline its signature.
    """
    mlflow = _mlflow()
    from mlflow.models import infer_signature

    mlflow_client = client()
    versions = metadata["table_versions"]
    inputs_print = fingerprint(parameters, versions)
    exported = scoring.export_json(model, metadata)  # before anything is logged
    tags = {
        FINGERPRINT_TAG: inputs_print,
        "workbook.profile": get_settings().profile,
        "mlflow.source.git.commit": _git_commit() or "unknown",
    }
    with (
        mlflow.start_run(experiment_id=experiment_id(mlflow_client), tags=tags) as run,
        warnings.catch_warnings(),
    ):
        # MLflow hints that integer columns cannot hold missing values: the tables' counts
        # have none, and the model's inputs are doubles.
        warnings.filterwarnings("ignore", "Hint: Inferred schema", UserWarning)
        mlflow.log_params(parameters)
        for table in _input_tables():
            dataset = _table_dataset(spark, table, versions[table.name])
            mlflow.log_input(dataset, context="training")
        for kind, values in metadata["metrics"].items():  # the model's (test), the rule's
            mlflow.log_metrics({f"{kind}_{k}": float(v) for k, v in values.items()})
        mlflow.log_dict(metadata, METADATA_FILE)
        mlflow.log_text(exported, SCORING_FILE)
        for name, figure in (figures or {}).items():
            mlflow.log_figure(figure, f"plots/{name}.png")
        scores = scoring.ScoringModel.from_json(exported).probabilities(input_example)
        signature = infer_signature(input_example, scores)
        _log_spark_model(mlflow, model, input_example, signature)
    return TrainingRun(run.info.run_id, inputs_print, _run_url(run))


def _log_spark_model(mlflow, model, input_example, signature) -> None:
    """The Spark pipeline as an MLflow model in the run's artifacts (``runs:/<run>/model``).

    Saved, then logged, rather than ``mlflow.spark.log_model``: that one also loads the
    pipeline back and scores the input example to check it for serving, about two seconds
    of Spark jobs; 03's self-check already scores with the registered version and compares
    it with the trained model.
    """
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / MODEL_PATH
        mlflow.spark.save_model(
            model,
            str(local),
            signature=signature,
            input_example=input_example,
            # Given, so MLflow does not start a process to infer them from the model.
            pip_requirements=[f"pyspark=={installed_version('pyspark')}"],
            dfs_tmpdir=_dfs_tmpdir(),
        )
        mlflow.log_artifacts(str(local), MODEL_PATH)


def _input_tables() -> tuple[names.Location, ...]:
    from workbook.train import INPUT_TABLES  # here: train imports Spark, the service does not

    return INPUT_TABLES


def _dfs_tmpdir() -> str:
    """Where MLflow has Spark write (or read) a model next to the local copy it logs.

    A folder of this machine: MLflow copies between it and its own local files through
    Hadoop's default file system, which is the local disk in both profiles, so driver and
    executors must see the same folder. On the native stack the executors run on this
    machine; in Compose it is a volume mounted at the same path in JupyterLab and the Spark
    worker (docker-compose.yml, checked by tests/stack/test_compose.py).
    """
    folder = get_settings().lakehouse / STAGING_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


def _git_commit() -> str | None:
    import subprocess

    from workbook.config import REPO_ROOT

    try:
        result = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def _run_url(run) -> str:
    if get_settings().profile == "stack":
        base = required("MLFLOW_TRACKING_URI").rstrip("/")
        return f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    return lakehouse.shown(run.info.artifact_uri.removeprefix("file://"))


# -- versions and aliases ---------------------------------------------------------------------


def register(run: TrainingRun):
    """The version of ``run``'s inputs: the existing one if a version has its fingerprint.

    Returns ``(version, created)``. Registering does not move any alias.
    """
    mlflow_client = client()
    existing = find_version(run.fingerprint, mlflow_client)
    version = existing or _create_version(mlflow_client, run)
    inputs = [lineage.table(t) for t in _input_tables()]
    # The training run that made the version (a rerun finds the first one's version).
    lineage.record("register_model", inputs, [as_dataset(version.version)], version.run_id)
    return version, existing is None


def as_dataset(version) -> lineage.Dataset:
    """A registered version, as a dataset of the lineage graph (named without opening the
    registry: a scoring stream names its model before it starts)."""
    return lineage.Dataset(lineage.MODELS, f"{MODEL_NAME}/{version}")


def _create_version(mlflow_client, run: TrainingRun):
    try:
        mlflow_client.create_registered_model(MODEL_NAME)
    except _mlflow().exceptions.MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return mlflow_client.create_model_version(
        MODEL_NAME,
        source=f"runs:/{run.run_id}/{MODEL_PATH}",
        run_id=run.run_id,
        tags={FINGERPRINT_TAG: run.fingerprint},
    )


def find_version(print_of_inputs: str, mlflow_client=None):
    mlflow_client = mlflow_client or client()
    found = mlflow_client.search_model_versions(
        f"name = '{MODEL_NAME}' and tag.`{FINGERPRINT_TAG}` = '{print_of_inputs}'"
    )
    return min(found, key=lambda v: int(v.version)) if found else None


@dataclass(frozen=True)
class AliasedVersion:
    """The version an alias names, as the registry records it."""

    version: str
    run_id: str
    artifact_uri: str  # the run's artifacts: file:// locally, mlflow-artifacts:/ on the stack


def alias_version(alias: str = names.CHAMPION) -> AliasedVersion:
    """The version that carries ``alias``; ``AliasNotFoundError`` if none does.

    Read without MLflow's client (see the module's docstring), so it is cheap enough to ask
    every few seconds.
    """
    found = _server_alias(alias) if get_settings().profile == "stack" else _local_alias(alias)
    if found is None:
        raise AliasNotFoundError(
            f"model {MODEL_NAME} has no version with the alias '{alias}' in "
            f"{location_shown()}: run notebook 03_train to train and register one"
        )
    return found


_ALIAS_QUERY = """
    SELECT v.version, v.run_id, r.artifact_uri
    FROM registered_model_aliases AS a
    JOIN model_versions AS v ON v.name = a.name AND v.version = a.version
    JOIN runs AS r ON r.run_uuid = v.run_id
    WHERE a.name = ? AND a.alias = ?
"""


def _local_alias(alias: str) -> AliasedVersion | None:
    import sqlite3

    database = Path(tracking_uri().removeprefix("sqlite:///"))
    if not database.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as db:
            row = db.execute(_ALIAS_QUERY, (MODEL_NAME, alias)).fetchone()
    except sqlite3.OperationalError as error:  # the store exists but has no registry tables yet
        if "no such table" not in str(error):
            raise
        return None
    return AliasedVersion(str(row[0]), row[1], row[2]) if row else None


def _server_alias(alias: str) -> AliasedVersion | None:
    from urllib.parse import urlencode

    query = urlencode({"name": MODEL_NAME, "alias": alias})
    try:
        found = _server_json(f"api/2.0/mlflow/registered-models/alias?{query}")
    except _ServerError as error:  # the server says 400 for an alias (or model) it lacks
        if "not found" in error.message.lower():
            return None
        raise
    if found is None:
        return None
    version = found["model_version"]
    run = _server_json(f"api/2.0/mlflow/runs/get?{urlencode({'run_id': version['run_id']})}")
    artifacts = run["run"]["info"]["artifact_uri"]
    return AliasedVersion(str(version["version"]), version["run_id"], artifacts)


class _ServerError(RuntimeError):
    """The tracking server answered with an error."""

    def __init__(self, status: int, path: str, body: str):
        try:
            self.message = json.loads(body).get("message", body)
        except ValueError:
            self.message = body
        super().__init__(f"MLflow tracking server: {status} for {path}: {self.message[:300]}")


def _server_get(path: str) -> bytes | None:
    """GET from the tracking server; ``None`` for 404, the services' message if it is down."""
    import urllib.error
    import urllib.request

    url = f"{required('MLFLOW_TRACKING_URI').rstrip('/')}/{path.lstrip('/')}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise _ServerError(error.code, path, error.read().decode(errors="replace")) from None
    except urllib.error.URLError as error:
        raise services.SERVICES["mlflow"].unavailable(error.reason) from None


def _server_json(path: str) -> dict | None:
    body = _server_get(path)
    return None if body is None else json.loads(body)


def _read_artifact(target: AliasedVersion, artifact_path: str) -> str:
    """One artifact of the version's run, read where the registry keeps it."""
    from urllib.parse import quote, unquote, urlsplit

    location = urlsplit(target.artifact_uri)
    if location.scheme == "file":
        return (Path(unquote(location.path)) / artifact_path).read_text()
    if location.scheme == "mlflow-artifacts":
        path = quote(f"{location.path.strip('/')}/{artifact_path}")
        body = _server_get(f"api/2.0/mlflow-artifacts/artifacts/{path}")
        if body is not None:
            return body.decode()
    raise FileNotFoundError(
        f"{artifact_path} of version {target.version} is not in {target.artifact_uri}"
    )


def registered_versions() -> set[str]:
    """Every version of the model the registry holds."""
    found = client().search_model_versions(f"name = '{MODEL_NAME}'")
    return {str(v.version) for v in found}


def set_alias(alias: str, version) -> None:
    """Point ``alias`` at ``version``: done last, once the version is complete."""
    client().set_registered_model_alias(MODEL_NAME, alias, str(version))


def version_metadata(version) -> dict:
    """The record of the run that registered ``version``."""
    return run_metadata(client().get_model_version(MODEL_NAME, str(version)).run_id)


def run_metadata(run_id: str) -> dict:
    """The record a training run logged (``train.model_metadata``)."""
    return json.loads(_download(run_id, METADATA_FILE))


def _download(run_id: str, artifact_path: str) -> str:
    mlflow = _mlflow()
    with tempfile.TemporaryDirectory() as folder:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id,
            artifact_path=artifact_path,
            dst_path=folder,
            tracking_uri=tracking_uri(),
        )
        return Path(local).read_text()


@dataclass(frozen=True)
class LoadedModel:
    version: str  # the registered version
    run_id: str
    metadata: dict


# Loaded pipelines, by Spark application, version and run: a version's artifacts never
# change, and the daily step asks for the champion every day.
_spark_models: dict[tuple[str, str, str], tuple] = {}


def load_spark_model(spark, alias: str = names.CHAMPION, version=None):
    """``(PipelineModel, LoadedModel)`` of the version that carries ``alias`` (or ``version``)."""
    mlflow = _mlflow()
    mlflow_client = client()
    if version is None:
        version = alias_version(alias)
    else:
        version = mlflow_client.get_model_version(MODEL_NAME, str(version))
    key = (spark.sparkContext.applicationId, str(version.version), version.run_id)
    if key not in _spark_models:
        model = mlflow.spark.load_model(
            f"models:/{MODEL_NAME}/{version.version}", dfs_tmpdir=_dfs_tmpdir()
        )
        loaded = LoadedModel(str(version.version), version.run_id, run_metadata(version.run_id))
        _spark_models[key] = (model, loaded)
    return _spark_models[key]


def load_scoring_model(alias: str = names.CHAMPION) -> scoring.ScoringModel:
    """The numpy export of the version that carries ``alias``: no Spark, no MLflow client."""
    target = alias_version(alias)
    artifact = json.loads(_read_artifact(target, SCORING_FILE))
    return scoring.ScoringModel(artifact, version=target.version)


RUN_COLUMNS = {
    "run_id": "run",
    f"tags.{FINGERPRINT_TAG}": "fingerprint",
    "params.reg_param": "reg_param",
    "params.max_iter": "max_iter",
    "metrics.test_pr_auc": "pr_auc",
    "metrics.test_roc_auc": "roc_auc",
    "metrics.baseline_pr_auc": "rule_pr_auc",
}


def runs_table(max_results: int = 20):
    """The experiment's runs, newest first: fingerprint, parameters and test metrics."""
    mlflow = _mlflow()
    frame = mlflow.search_runs(
        [experiment_id(client())], max_results=max_results, order_by=["start_time DESC"]
    )
    present = [c for c in RUN_COLUMNS if c in frame.columns]
    return frame[present].rename(columns=RUN_COLUMNS)


def reset() -> int:
    """Delete the registered model (its versions and aliases) and the experiment's runs.

    For ``make stack-reset``: the next training run registers version 1 again. Returns the
    number of runs deleted.
    """
    mlflow_client = client()
    with contextlib.suppress(_mlflow().exceptions.MlflowException):
        mlflow_client.delete_registered_model(MODEL_NAME)
    found = mlflow_client.get_experiment_by_name(names.EXPERIMENT)
    if found is None:
        return 0
    runs = mlflow_client.search_runs([found.experiment_id], max_results=50_000)
    for run in runs:
        mlflow_client.delete_run(run.info.run_id)
    return len(runs)
