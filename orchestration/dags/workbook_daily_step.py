"""The platform's day under Airflow: notebook 06's daily step, one task per stage.

Each task runs one stage of ``workbook.loop`` for the run's logical date, as
``python -m workbook.loop --stage S --day D`` in the workbook's own environment (Airflow's
pins conflict with the workbook's, so Airflow cannot import it). The stages are the
library's, not the notebook's cells: a task is retried alone, and the notebook and the DAG
cannot drift apart. The day's report is kept between the tasks (``loop.save``).

The decision task prints the day's report; the branch reads it and runs the retraining
task (train, register, and promote only with a gain) when the monitoring called for it.
Runs go one at a time, in date order: each day builds on the tables of the day before.

Params: ``label_delay`` (days until a day's labels arrive) and ``drift_from`` (the first
day of the simulated drift, or none), as notebook 06's ``label_delay_days`` and drift day.
"""

from __future__ import annotations

import json
import os
import shlex
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Param, task

REPO = Path(__file__).resolve().parents[2]
# The workbook's interpreter; Airflow's own cannot import the workbook.
WORKBOOK_PYTHON = os.environ.get("WORKBOOK_PYTHON", str(REPO / ".venv" / "bin" / "python"))
# workbook.loop.STAGES up to the decision (tests/orchestration checks that they agree).
STAGES = ("ingest", "features", "online", "scoring", "monitoring", "decision")


def stage(name: str) -> BashOperator:
    """The task that runs one stage of the run's day in the workbook's environment."""
    command = (
        f"{shlex.quote(WORKBOOK_PYTHON)} -m workbook.loop --stage {name} --day {{{{ ds }}}}"
        " --label-delay {{ params.label_delay }}"
        "{% if params.drift_from %} --drift-from {{ params.drift_from }}{% endif %}"
    )
    return BashOperator(task_id=name, bash_command=command, cwd=str(REPO))


with DAG(
    dag_id="workbook_daily_step",
    description="notebook 06's daily step: ingest, features, online, score, monitor, decide",
    doc_md=__doc__,
    schedule="@daily",
    # Before any simulated day: a run's logical date is the day it runs (its `ds`).
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
    params={
        "label_delay": Param(3, type="integer", minimum=0),
        "drift_from": Param(None, type=["null", "string"], format="date"),
    },
    tags=["workbook"],
) as dag:
    stages = [stage(name) for name in STAGES]
    for before, after in zip(stages, stages[1:], strict=False):
        before >> after
    retraining = stage("retraining")
    keep = EmptyOperator(task_id="keep_champion")

    @task.branch
    def retrain_or_keep(report: str) -> str:
        """The decision task's last line is the day's report, as JSON."""
        return "retraining" if json.loads(report)["retrain"] else "keep_champion"

    retrain_or_keep(stages[-1].output) >> [retraining, keep]
