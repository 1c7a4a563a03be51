"""The Airflow DAG runs notebook 06's daily step: `airflow dags test` (no scheduler) for
three logical dates gives the tables the loop gives for the same days.

Both start from the quick workbook (01 to 05, then three days of 06): the loop runs three
more days on one fresh copy, the DAG the same three days, one run per date, on another.
Every Delta table and the online table must then hold the same rows, and the DAG must have
retrained on the days the loop did, and only on those.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import quick_workbook
from lakehouse_rows import delta_tables, online_rows, table_rows
from pyspark.sql import functions as F

from workbook import lakehouse, loop, names
from workbook.config import REPO_ROOT

pytestmark = pytest.mark.spark

DAG_ID = "workbook_daily_step"
AIRFLOW = REPO_ROOT / ".venv-airflow" / "bin" / "airflow"
DAYS = 3


def snapshot(spark, root, monkeypatch) -> dict:
    """Every table's rows; Delta's cached logs dropped first, as the copies share a path."""
    spark._jvm.org.apache.spark.sql.delta.DeltaLog.clearCache()
    rows = {name: table_rows(spark, path) for name, path in delta_tables(root).items()}
    rows["online"] = online_rows(root, monkeypatch)
    return rows


def loop_settings(spark, root, monkeypatch) -> tuple[list, dict]:
    """The next ``DAYS`` days, and the quick workbook's loop settings as the DAG's params."""
    monkeypatch.setenv("WORKBOOK_LAKEHOUSE", str(root))
    decisions = spark.read.format("delta").load(lakehouse.location(names.DECISIONS_TABLE))
    first, last = decisions.agg(F.min(names.MONITORED_DAY), F.max(names.MONITORED_DAY)).first()
    days = [last + timedelta(days=k) for k in range(1, DAYS + 1)]
    params = {"label_delay": quick_workbook.LABEL_DELAY}
    if quick_workbook.DRIFT_FROM_DAY:
        params["drift_from"] = str(first + timedelta(days=quick_workbook.DRIFT_FROM_DAY - 1))
    return days, params


def airflow(args: list[str], env: dict) -> subprocess.CompletedProcess:
    if not AIRFLOW.exists():
        pytest.fail(f"no Airflow at {AIRFLOW}: run make airflow-env")
    return subprocess.run(
        [str(AIRFLOW), *args], env=env, capture_output=True, text=True, timeout=1200
    )


def listed(args: list[str], env: dict) -> list[dict]:
    """What an Airflow listing command prints with ``-o json`` (its last line)."""
    done = airflow([*args, "-o", "json"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("[")][-1])


def dag_run(day, env: dict) -> tuple[str, dict[str, str]]:
    """The state of the DAG's run for ``day`` and of each of its tasks."""
    (run,) = [
        r
        for r in listed(["dags", "list-runs", DAG_ID], env)
        if r["logical_date"].startswith(str(day))
    ]
    tasks = listed(["tasks", "states-for-dag-run", DAG_ID, run["run_id"]], env)
    return run["state"], {t["task_id"]: t["state"] for t in tasks}


@pytest.fixture(scope="module")
def by_loop(spark):
    """The loop's three days: their tables, and the days it retrained."""
    with quick_workbook.fresh_copy() as run, pytest.MonkeyPatch.context() as monkeypatch:
        days, params = loop_settings(spark, run.lakehouse, monkeypatch)
        command = [sys.executable, "-m", "workbook.loop", "--days", str(DAYS)]
        command += ["--label-delay", str(params["label_delay"])]
        if "drift_from" in params:
            command += ["--drift-from", params["drift_from"]]
        done = subprocess.run(command, env=run.environment(), capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        assert [r["day"] for r in reports] == [str(d) for d in days]
        tables = snapshot(spark, run.lakehouse, monkeypatch)
    return days, params, reports, tables  # the copy is let go: the DAG's test takes the next


def test_the_dag_gives_the_tables_of_the_loop(spark, by_loop, tmp_path):
    days, params, reports, expected = by_loop
    with quick_workbook.fresh_copy() as run, pytest.MonkeyPatch.context() as monkeypatch:
        env = {
            **run.environment(),
            "AIRFLOW_HOME": str(tmp_path / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "orchestration" / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "WORKBOOK_PYTHON": sys.executable,
        }
        migrated = airflow(["db", "migrate"], env)
        assert migrated.returncode == 0, migrated.stderr[-3000:]
        for day, report in zip(days, reports, strict=True):
            started = time.perf_counter()
            ran = airflow(["dags", "test", DAG_ID, str(day), "--conf", json.dumps(params)], env)
            assert ran.returncode == 0, (ran.stdout + ran.stderr)[-5000:]
            took = time.perf_counter() - started
            state, tasks = dag_run(day, env)
            print(f"DAG run for {day}: {state} in {took:.0f} s; {tasks}")
            assert set(loop.STAGES) <= set(tasks), "the DAG lacks a stage of the loop"
            branch, other = ("retraining", "keep_champion")[:: 1 if report["retrain"] else -1]
            assert state == "success" and tasks.pop(other) == "skipped", tasks
            assert set(tasks.values()) == {"success"} and branch in tasks, tasks
        found = snapshot(spark, run.lakehouse, monkeypatch)
    assert set(found) == set(expected), "a table appeared or disappeared"
    differing = [name for name in expected if found[name] != expected[name]]
    assert not differing, f"the DAG and the loop left different rows in {differing}"
