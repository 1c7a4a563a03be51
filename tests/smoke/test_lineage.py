"""The lineage the smoke run left beside its lakehouse: every table the workbook wrote, with
what it was made from, from OpenLineage's events (Spark's listener and the workbook's own).
"""

from __future__ import annotations

import re

import pytest
from lakehouse_rows import delta_tables

from workbook import lineage, names
from workbook.config import get_settings

RAW, QUARANTINE, LABELS = names.RAW_TABLE.name, names.QUARANTINE_TABLE.name, names.LABELS_TABLE.name
FEATURES, PREDICTIONS = names.FEATURES_TABLE.name, names.PREDICTIONS_TABLE.name
MONITORING, DECISIONS = names.MONITORING_TABLE.name, names.DECISIONS_TABLE.name
MODEL_V1 = "model v1"  # 03's

# What each dataset is made from, by the design; the loop may add more (a challenger's model).
MADE_FROM = {
    RAW: {lineage.EVENTS},
    QUARANTINE: {lineage.EVENTS},
    LABELS: {lineage.GROUND_TRUTH_LABEL},
    FEATURES: {RAW},
    MODEL_V1: {RAW, FEATURES, LABELS},
    PREDICTIONS: {RAW, FEATURES, MODEL_V1},
    lineage.ONLINE_LABEL: {FEATURES},
    MONITORING: {RAW, FEATURES, PREDICTIONS, LABELS},
    DECISIONS: {MONITORING, MODEL_V1},
}
# Edges Spark's listener reports by itself, from the plans of the jobs that wrote them (the
# features come through a checkpoint and a MERGE, which hide their source from it).
SEEN_BY_SPARK = {RAW: {lineage.EVENTS}, QUARANTINE: {lineage.EVENTS}, PREDICTIONS: {RAW, FEATURES}}


@pytest.fixture(scope="module")
def settings(workbook_run, monkeypatch_module):
    monkeypatch_module.setenv("WORKBOOK_LAKEHOUSE", str(workbook_run.lakehouse))
    return get_settings()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def graph(settings) -> lineage.Lineage:
    return lineage.graph(settings=settings)


def test_every_table_written_is_an_output_with_its_inputs(workbook_run, graph):
    written = {path.rsplit("/", 1)[-1] for path in delta_tables(workbook_run.lakehouse)}
    assert written == {t.name for t in lineage.TABLES}
    for dataset in [*written, lineage.ONLINE_LABEL, MODEL_V1]:
        assert dataset in graph.inputs, f"no job wrote {dataset}"
        missing = MADE_FROM[dataset] - graph.inputs[dataset]
        assert not missing, f"{dataset} was written from {graph.inputs[dataset]}, not {missing}"


def test_spark_reports_the_jobs_it_runs(graph, settings):
    for output, expected in SEEN_BY_SPARK.items():
        seen = set()
        for run in graph.runs:
            if run.from_spark and output in {lineage.label(d, settings) for d in run.outputs}:
                seen |= {lineage.label(d, settings) for d in run.inputs}
        assert expected <= seen, f"Spark saw {output} written from {seen}, not {expected}"


def test_each_edge_names_the_notebooks_that_wrote_it(graph):
    assert {"01_ingest", "06_monitor_retrain"} <= graph.writers[RAW]
    assert graph.writers[MODEL_V1] == {"03_train"}
    assert re.fullmatch("[0-9a-f]{32}", graph.training_runs[MODEL_V1]), "the MLflow run's id"
    assert "06_monitor_retrain" in graph.writers[DECISIONS]
    assert graph.unreadable == 0


def test_the_graph_is_drawn_sources_first(graph):
    order = graph.datasets
    for dataset, sources in graph.inputs.items():
        assert all(order.index(s) < order.index(dataset) for s in sources), dataset
