"""A service that is down stops the first notebook cell that needs it, with one clear message."""

from __future__ import annotations

from pathlib import Path

import papermill
import pytest

from workbook.config import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"
CLOSED = "127.0.0.1:9"  # the discard port: nothing listens on it here


@pytest.mark.parametrize(
    ("variable", "down", "notebook", "first_use", "title"),
    [
        ("SPARK_MASTER_URL", f"spark://{CLOSED}", "01_ingest", "get_spark(", "Spark standalone"),
        ("S3_ENDPOINT", f"http://{CLOSED}", "01_ingest", "get_spark(", "S3 object storage"),
        ("KAFKA_BOOTSTRAP_SERVERS", CLOSED, "01_ingest", "/transactions", "Kafka"),
        ("PGPORT", "9", "05_feature_store", "store.connect(", "PostgreSQL"),
        (
            "MLFLOW_TRACKING_URI",
            f"http://{CLOSED}",
            "03_train",
            "registry.check_available(",
            "MLflow",
        ),
    ],
)
def test_a_down_service_is_named_where_it_is_first_needed(
    variable, down, notebook, first_use, title, monkeypatch, tmp_path: Path
):
    monkeypatch.setenv(variable, down)  # the kernel inherits this environment
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        papermill.execute_notebook(
            NOTEBOOKS / f"{notebook}.ipynb",
            tmp_path / "out.ipynb",
            cwd=str(NOTEBOOKS),
            progress_bar=False,
            kernel_name="python3",
        )
    error = failure.value
    assert first_use in error.source, f"failed in another cell:\n{error.source}"
    assert error.ename in ("ServiceUnavailableError", "StoreUnavailableError")
    assert title in error.evalue
    assert "127.0.0.1:9" in error.evalue
    assert "make stack-up" in error.evalue and "docker compose up -d" in error.evalue
