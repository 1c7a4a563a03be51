"""The daily step's decision: when a challenger is trained, and the reason given in words."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from workbook import loop, registry

pytestmark = pytest.mark.spark

CHAMPION = registry.LoadedModel("1", "run", {"metrics": {"test": {"pr_auc": 0.6}}})
SETTINGS = loop.LoopSettings()


def decided(spark, drift=None, quality=None, day=date(2031, 3, 10), **report):
    report = {"predictions": 6700, "labels_of": "2031-03-07"} | report
    report = loop.DayReport(day, drift=drift or {}, quality=quality or {}, **report)
    return loop.decide(spark, CHAMPION, report, SETTINGS)


def test_a_stable_day_keeps_the_champion(spark):
    retrain, reason = decided(spark, {"psi:amount_log": 0.01, "psi:prediction_score": 0.02})
    assert not retrain and reason == "keep version 1: no input over the PSI alert, quality held"


def test_a_moderate_shift_is_named_but_trains_nothing(spark):
    retrain, reason = decided(spark, {"psi:category": 0.15, "psi:amount_log": 0.3})
    assert not retrain
    assert "amount_log over the PSI alert" in reason and "moderate shift of category" in reason


@pytest.mark.parametrize(
    "drift",
    [
        {"psi:amount_log": 0.3, "psi:category": 0.4},  # two inputs
        {"psi:prediction_score": 0.26},  # the score alone
    ],
)
def test_significant_drift_trains_a_challenger(spark, drift):
    retrain, reason = decided(spark, drift)
    assert retrain and reason.startswith("train a challenger: significant drift (PSI > 0.25) of")
    assert all(name.removeprefix("psi:") in reason for name in drift)


def test_a_quality_drop_trains_a_challenger(spark):
    retrain, reason = decided(spark, quality={"pr_auc": 0.44})  # floor: 0.6 * 0.75 = 0.45
    assert retrain and "PR-AUC 0.440 on 2031-03-07 is below 0.450" in reason
    assert not decided(spark, quality={"pr_auc": 0.46})[0]


def test_at_most_one_challenger_in_a_few_days(spark):
    trained = loop.DayReport(date(2031, 3, 8), retrain=True, challenger="2", champion="1")
    trained.reason = "train a challenger: test"
    loop.record_decision(spark, "1", trained)
    retrain, reason = decided(spark, quality={"pr_auc": 0.1})
    assert not retrain and "a challenger was trained on 2031-03-08" in reason
    later = date(2031, 3, 8 + SETTINGS.retrain_every_days)
    assert decided(spark, quality={"pr_auc": 0.1}, day=later)[0]


def test_a_day_without_valid_transactions_keeps_the_champion_and_says_so(spark):
    retrain, reason = decided(spark, predictions=0)
    assert not retrain
    assert reason.startswith("keep version 1: no valid transaction arrived for 2031-03-10")
    assert "quarantine" in reason


def test_labels_that_never_arrive_are_named(spark):
    lost = {"labels_of": None, "labels_lost": "2031-03-07"}
    retrain, reason = decided(spark, {"psi:amount_log": 0.01}, **lost)
    assert not retrain and "quality held" not in reason
    assert reason.endswith("the labels of 2031-03-07 have not arrived: its quality is unknown")
    drift = {"psi:amount_log": 0.3, "psi:category": 0.4}
    retrain, reason = decided(spark, drift, day=date(2031, 4, 1), **lost)  # no recent challenger
    assert retrain and "the labels of 2031-03-07 have not arrived" in reason


def test_a_day_is_summed_up_in_one_line_even_without_transactions():
    scored = loop.DayReport(
        date(2031, 3, 10),
        predictions=6700,
        scored_by="2",
        drift={"psi:amount_log": 0.31, "psi:amount_vs_30d_avg": 0.05},
    )
    assert scored.summary() == (
        "2031-03-10: 6,700 scored by version 2, top PSI amount_log 0.31, labels of -"
    )
    empty = loop.DayReport(date(2031, 3, 11), labels_of="2031-03-08")
    assert (
        empty.summary() == "2031-03-11: nothing scored (no valid transaction), labels of 2031-03-08"
    )


def test_a_stage_resumes_from_the_report_the_stages_before_it_saved(spark):
    day = date(2031, 3, 11)
    with pytest.raises(FileNotFoundError, match="run the stages before scoring"):
        loop.resume(spark, day, SETTINGS, "scoring")
    step = loop.resume(spark, day, SETTINGS, "ingest")
    step.report.events, step.report.seconds = {"days": 1, "lines": 7}, {"ingest": 1.5}
    loop.save(step)
    resumed = loop.resume(spark, day, SETTINGS, "features").report
    assert resumed == step.report and resumed.day == day
    assert loop.resume(spark, day, SETTINGS, "ingest").report == loop.DayReport(day)
    with pytest.raises(ValueError, match="no stage 'scores'"):
        loop.run_stage(step, "scores")


def test_the_drift_day_is_one_of_the_loops_days_or_a_clear_error():
    days = [date(2025, 2, 1) + timedelta(days=k) for k in range(3)]
    assert loop.drift_day(days, 0) is None
    assert loop.drift_day(days, 3) == date(2025, 2, 3)
    with pytest.raises(ValueError, match="the loop runs 3 days: choose a day from 1 to 3"):
        loop.drift_day(days, 5)


def test_the_labelled_days_are_those_whose_labels_arrive_in_the_loop_or_a_clear_error():
    days = [date(2025, 2, 1) + timedelta(days=k) for k in range(3)]
    assert loop.labelled_days(days, 1) == days[:2]
    with pytest.raises(ValueError, match="3 loop days with labels 3 days late"):
        loop.labelled_days(days, 3)


@pytest.mark.parametrize(
    ("rows", "interpreted"),  # for ingest, features, monitoring and retraining
    [
        (200_000, (True, True, True, True)),
        (2_000_000, (True, False, True, False)),
        (20_000_000, (False, False, False, False)),
    ],
)
def test_a_stage_runs_without_generated_code_only_when_it_reads_few_rows(rows, interpreted):
    from workbook.simulator import SimulationConfig

    step = loop.Step(None, loop.DayReport(date(2025, 2, 1)), SETTINGS)
    step.__dict__["config"] = SimulationConfig(n_transactions=rows)  # not read from a lakehouse
    stages = ("ingest", "features", "monitoring", "retraining")
    small = tuple(loop.rows_read(step, s) <= loop.INTERPRETED_ROWS for s in stages)
    assert small == interpreted
    step.events = ["{}"] * 10  # a day of given lines: their number
    assert loop.rows_read(step, "ingest") == 10
