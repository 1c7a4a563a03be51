"""Tracking and the registry on a real MLflow store (SQLite in the test lakehouse), no mocks.

The tests run in order on one registry: before any training there is no champion; a run is
recorded whole; its version is found again by fingerprint; the champion alias moves only
by the rule; consumers load by alias and follow it when it moves.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import warnings
from datetime import date, timedelta

import numpy as np
import pytest

from workbook import (
    features,
    ingest,
    lakehouse,
    names,
    promotion,
    registry,
    reproduction,
    store,
    train,
)
from workbook.simulator import SimulationConfig, simulate

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient

pytestmark = [pytest.mark.spark, pytest.mark.postgres]

CONFIG = SimulationConfig(
    n_transactions=2400, days=14, n_accounts=60, seed=3, compromised_share=0.5
)
TEST_FROM = date(2025, 1, 11)


@pytest.fixture(scope="module")
def tables(spark):
    """The raw, features and labels tables of a small simulation, at their locations."""
    from test_scoring import to_raw

    tx, labels = simulate(CONFIG)
    raw = to_raw(spark, tx)
    raw.write.format("delta").mode("overwrite").save(lakehouse.location(names.RAW_TABLE))
    daily = features.daily_account_features(raw)
    daily.write.format("delta").mode("overwrite").save(lakehouse.location(names.FEATURES_TABLE))
    ingest.write_labels(spark, labels, lakehouse.location(names.LABELS_TABLE))
    return lakehouse.table_versions(spark, train.INPUT_TABLES)


def fit(spark, versions, reg_param: float):
    parameters = train.run_parameters(CONFIG, reg_param, 30, 4)
    model, evaluation, _, test_df = reproduction.fit(spark, versions, CONFIG, parameters)
    metadata = train.model_metadata(CONFIG, versions, TEST_FROM, 4, evaluation)
    example = test_df.select(*names.NUMERIC_INPUTS, *names.CATEGORICAL_INPUTS).limit(5)
    run = registry.log_training_run(
        spark, model, parameters=parameters, metadata=metadata, input_example=example.toPandas()
    )
    return model, evaluation, test_df, run


@pytest.fixture(scope="module")
def first(spark, tables):
    return fit(spark, tables, reg_param=0.001)


def test_without_training_there_is_no_champion(tables):
    with pytest.raises(registry.AliasNotFoundError) as error:
        registry.alias_version(names.CHAMPION)
    message = str(error.value)
    assert registry.MODEL_NAME in message and names.CHAMPION in message and "03_train" in message


def test_a_run_records_parameters_datasets_metrics_and_artifacts(first, tables):
    _, evaluation, _, run = first
    recorded = registry.client().get_run(run.run_id)
    assert recorded.data.params["reg_param"] == "0.001"
    assert recorded.data.params["simulation.seed"] == str(CONFIG.seed)
    assert recorded.data.metrics["test_pr_auc"] == pytest.approx(evaluation.model["pr_auc"])
    assert recorded.data.metrics["baseline_pr_auc"] == pytest.approx(evaluation.baseline["pr_auc"])
    assert recorded.data.tags[registry.FINGERPRINT_TAG] == run.fingerprint
    assert recorded.data.tags["workbook.profile"] == "local"
    assert recorded.data.tags["mlflow.source.git.commit"]

    datasets = {d.dataset.name: d.dataset for d in recorded.inputs.dataset_inputs}
    assert set(datasets) == {t.name for t in train.INPUT_TABLES}
    for table in train.INPUT_TABLES:
        source = json.loads(datasets[table.name].source)
        assert source["path"] == lakehouse.location(table)
        # MLflow leaves version 0 out of the source; the digest always names it.
        assert source.get("delta_table_version", 0) == tables[table.name]
        assert datasets[table.name].digest == f"{table.name}@v{tables[table.name]}"

    artifacts = {a.path for a in registry.client().list_artifacts(run.run_id)}
    assert {registry.METADATA_FILE, "scoring", registry.MODEL_PATH} <= artifacts
    logged = registry.client().list_artifacts(run.run_id, registry.MODEL_PATH)
    assert "model/MLmodel" in {a.path for a in logged}


def test_the_same_inputs_register_one_version(first):
    _, _, _, run = first
    version, created = registry.register(run)
    again, created_again = registry.register(run)
    assert created and not created_again
    assert again.version == version.version
    assert registry.find_version(run.fingerprint).version == version.version


def test_the_first_version_becomes_champion_and_a_rerun_keeps_it(spark, first):
    _, evaluation, test_df, run = first
    version = registry.find_version(run.fingerprint)
    decision = promotion.consider(spark, version, evaluation.model["pr_auc"], test_df)
    assert decision.promoted and "first champion" in decision.reason
    again = promotion.consider(spark, version, evaluation.model["pr_auc"], test_df)
    assert not again.promoted and again.champion == str(version.version)
    assert str(registry.alias_version(names.CHAMPION).version) == str(version.version)


def test_consumers_load_the_champion_and_score_alike(spark, first):
    model, _, test_df, run = first
    spark_model, loaded = registry.load_spark_model(spark, names.CHAMPION)
    scoring_model = registry.load_scoring_model(names.CHAMPION)
    assert (
        loaded.version
        == scoring_model.version
        == str(registry.find_version(run.fingerprint).version)
    )
    assert loaded.run_id == run.run_id
    assert (
        train.trained_on_version(loaded.metadata)
        == loaded.metadata["table_versions"][names.RAW_TABLE.name]
    )
    rows = train.score(spark_model, test_df.limit(50)).toPandas()
    original = train.score(model, test_df.limit(50)).toPandas()
    assert np.allclose(rows[names.PREDICTION_SCORE], original[names.PREDICTION_SCORE], atol=1e-12)
    assert np.max(np.abs(scoring_model.probabilities(rows) - rows[names.PREDICTION_SCORE])) < 1e-6


@pytest.fixture(scope="module")
def second(spark, tables, first):
    """A second version: other parameters, so another fingerprint."""
    model, evaluation, test_df, run = fit(spark, tables, reg_param=0.5)
    version, created = registry.register(run)
    assert created
    return version, evaluation, test_df


def test_a_worse_version_does_not_take_over(spark, second):
    version, _, test_df = second
    champion = registry.alias_version(names.CHAMPION)
    champion_model, _ = registry.load_spark_model(spark, version=champion.version)
    scored = train.scores_and_labels(train.score(champion_model, test_df))
    from workbook import metrics

    champion_pr_auc = metrics.pr_auc(scored[names.PREDICTION_SCORE], scored[names.LABEL])
    worse = promotion.consider(spark, version, champion_pr_auc - 0.01, test_df)
    assert not worse.promoted and worse.champion == str(champion.version)
    assert "kept the champion" in worse.reason
    assert str(registry.alias_version(names.CHAMPION).version) == str(champion.version)
    # "At least as good": equal is enough.
    equal = promotion.consider(spark, version, champion_pr_auc, test_df)
    assert equal.promoted and registry.alias_version(names.CHAMPION).version == str(version.version)
    registry.set_alias(names.CHAMPION, champion.version)  # back, for the next test


def test_the_service_follows_the_alias_under_load(tables, second, first, spark):
    """Move the alias while clients score: no failed request, and the new version is used."""
    version, _, _ = second
    old = str(registry.alias_version(names.CHAMPION).version)
    latest = features.latest_per_account(
        spark.read.format("delta").load(lakehouse.location(names.FEATURES_TABLE))
    ).toPandas()
    conn = store.connect()
    store.create_tables(conn)
    store.materialize(conn, latest)
    conn.close()
    account = latest[names.ACCOUNT_ID].iloc[0]
    day = latest[names.TRANSACTION_DATE].iloc[0]
    event = {
        names.TRANSACTION_ID: "TX-ALIAS",
        names.TIMESTAMP: f"{date.fromordinal(day.toordinal() + 1).isoformat()}T12:00:00Z",
        names.ACCOUNT_ID: account,
        names.AMOUNT: 42.0,
        names.CURRENCY: "EUR",
    }
    from workbook import serving

    seen, failures, stop = [], [], threading.Event()
    with TestClient(serving.create_app(poll_seconds=0.2)) as client:
        assert client.get("/health").json()["model_version"] == old

        def score_until_stopped():
            while not stop.is_set():
                answer = client.post("/score", json=event)
                if answer.status_code != 200:
                    failures.append(answer.text)
                else:
                    seen.append(answer.json()["model_version"])

        workers = [threading.Thread(target=score_until_stopped) for _ in range(4)]
        for worker in workers:
            worker.start()
        time.sleep(0.5)
        registry.set_alias(names.CHAMPION, version.version)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (not seen or seen[-1] != str(version.version)):
            time.sleep(0.1)
        time.sleep(0.3)
        stop.set()
        for worker in workers:
            worker.join()
        health = client.get("/health").json()
    registry.set_alias(names.CHAMPION, old)
    assert failures == []
    assert set(seen) == {old, str(version.version)}
    assert seen[-1] == str(version.version) == health["model_version"]
    assert health["model_alias"] == names.CHAMPION
    switched = seen.index(str(version.version))
    assert old not in seen[switched + 8 :], "once the new version is in, it stays"


def test_the_alias_is_read_as_mlflow_reads_it(second):
    """The registry's own client and the workbook's light reader name the same version."""
    version, _, _ = second
    mlflow_client = registry.client()
    for target in (version.version, registry.alias_version(names.CHAMPION).version):
        registry.set_alias(names.CHALLENGER, target)
        expected = mlflow_client.get_model_version_by_alias(registry.MODEL_NAME, names.CHALLENGER)
        found = registry.alias_version(names.CHALLENGER)
        assert (found.version, found.run_id) == (str(expected.version), expected.run_id)
        assert found.artifact_uri == mlflow_client.get_run(expected.run_id).info.artifact_uri
    mlflow_client.delete_registered_model_alias(registry.MODEL_NAME, names.CHALLENGER)
    with pytest.raises(registry.AliasNotFoundError):
        registry.alias_version(names.CHALLENGER)


def test_the_service_loads_the_champion_without_spark(tables, first):
    """After the alias test materialized the online rows: a fresh process scores by alias."""
    conn = store.connect()
    latest = store.read_all()
    conn.close()
    event = {
        names.TRANSACTION_ID: "TX-PROBE",
        names.TIMESTAMP: f"{latest[names.FEATURE_DATE].max() + timedelta(days=1)}T12:00:00Z",
        names.ACCOUNT_ID: latest[names.ACCOUNT_ID].iloc[0],
        names.AMOUNT: 42.0,
        names.CURRENCY: "EUR",
    }
    probe = f"""
import json, sys, warnings
warnings.simplefilter("ignore")
from fastapi.testclient import TestClient
from workbook import serving
with TestClient(serving.create_app()) as client:
    answer = client.post("/score", json={event!r})
heavy = sorted(m for m in sys.modules if m.startswith(("pyspark", "py4j", "mlflow", "pandas")))
print(json.dumps([answer.status_code, answer.json().get("model_version"), heavy]))
"""
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    status, version, loaded = json.loads(result.stdout.splitlines()[-1])
    assert status == 200
    assert version == str(registry.alias_version(names.CHAMPION).version)
    assert loaded == [], "the service reads the registry without MLflow's client or Spark"


def coefficients(model) -> np.ndarray:
    lr = model.stages[-1]
    return np.r_[lr.coefficients.toArray(), lr.intercept]


def test_a_logged_run_is_reproduced_from_its_table_versions(spark, first):
    model, evaluation, _, run = first
    again = reproduction.reproduce(spark, run.run_id)
    assert np.max(np.abs(coefficients(again.model) - coefficients(model))) < 1e-9
    for metric in ("roc_auc", "pr_auc", "precision", "recall"):
        assert again.evaluation.model[metric] == pytest.approx(evaluation.model[metric], abs=1e-9)
    assert again.evaluation.threshold == pytest.approx(evaluation.threshold, abs=1e-9)


def test_a_vacuumed_version_cannot_be_reproduced(spark, first, tables):
    """Last in this module: it rewrites the raw table and removes its first version's files."""
    from delta.tables import DeltaTable

    _, _, _, run = first
    path = lakehouse.location(names.RAW_TABLE)
    spark.read.format("delta").load(path).write.format("delta").mode("overwrite").save(path)
    # Vacuum lists the table in 10,000 tasks by default: a minute for a table this small.
    for_vacuum = {
        "spark.databricks.delta.retentionDurationCheck.enabled": "false",
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": "2",
    }
    before = {key: spark.conf.get(key) for key in for_vacuum}
    for key, value in for_vacuum.items():
        spark.conf.set(key, value)
    try:
        DeltaTable.forPath(spark, path).vacuum(0)
    finally:
        for key, value in before.items():
            spark.conf.set(key, value)
    with pytest.raises(reproduction.ReproductionError) as error:
        reproduction.reproduce(spark, run.run_id)
    message = str(error.value)
    assert names.RAW_TABLE.name in message
    assert f"version {tables[names.RAW_TABLE.name]}" in message
    assert "vacuumed" in message
