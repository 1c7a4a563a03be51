"""Prometheus watching the scoring service: its alert rules under promtool, and the
native stack's Prometheus scraping the service as it scores the stack's champion."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from workbook import launcher, names, registry, store

RULES = Path(__file__).resolve().parents[2] / "stack" / "prometheus"
ALERTS = {"ScoringServiceDown", "ScoringLatencyOverBudget", "ScoringErrorRateHigh", "ScoreDrift"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: make stack-up installs Debian's prometheus package")
    return found


def test_alert_rules_pass_their_promtool_tests():
    checked = subprocess.run(
        [promtool(), "test", "rules", "alerts_test.yml"], cwd=RULES, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_compose_prometheus_configuration_is_valid():
    checked = subprocess.run(
        [promtool(), "check", "config", "prometheus.yml"], cwd=RULES, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def query(expression: str) -> list[dict]:
    port = os.environ.get("PROMETHEUS_PORT", "9090")
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)["data"]["result"]


def wait_for(expression: str, wanted, timeout: float = 30.0) -> list[dict]:
    """Query until ``wanted(result)`` holds (Prometheus scrapes every 2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        result = query(expression)
        if wanted(result) or time.monotonic() > deadline:
            return result
        time.sleep(1)


def value(result: list[dict]) -> float:
    return sum(float(r["value"][1]) for r in result)


def test_prometheus_scrapes_the_service_and_loads_the_rules():
    port = int(os.environ.get("PROMETHEUS_PORT", "9090"))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=10) as response:
        groups = json.load(response)["data"]["groups"]
    assert {r["name"] for g in groups for r in g["rules"]} == ALERTS

    online = store.read_all().head(5)
    accounts = online[names.ACCOUNT_ID].tolist()
    day_after = pd.Timestamp(online[names.FEATURE_DATE].max()) + pd.Timedelta(days=1, hours=12)
    event = {
        names.TIMESTAMP: day_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        names.AMOUNT: 42.0,
        names.CURRENCY: "EUR",
        names.TRANSACTION_TYPE: "online",
        names.MERCHANT_ID: "M000001",
        names.CATEGORY: "groceries",
    }
    service = launcher.start_service(port=int(os.environ.get("SERVING_PORT", "8000")))
    try:
        for i, account in enumerate(accounts):
            body = json.dumps({**event, names.TRANSACTION_ID: f"TX-{i}", names.ACCOUNT_ID: account})
            request = urllib.request.Request(
                f"{service.url}/score", body.encode(), {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 200
        scored = 'fraud_scoring_requests_total{job="fraud-scoring",endpoint="/score",status="200"}'
        assert value(wait_for(scored, lambda r: value(r) >= len(accounts))) >= len(accounts)
        assert value(query('up{job="fraud-scoring"}')) == 1
        champion = str(registry.alias_version(names.CHAMPION).version)
        (info,) = query("fraud_scoring_model_info")
        assert info["metric"]["version"] == champion
        assert info["metric"]["alias"] == names.CHAMPION
    finally:
        service.stop()
    # Stopped: the next scrape fails, which is what ScoringServiceDown pages on.
    down = wait_for('up{job="fraud-scoring"}', lambda r: value(r) == 0)
    assert value(down) == 0
