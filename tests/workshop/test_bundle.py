"""The offline bundle: built here, then installed and run with every network door shut.

The learner's path from the bundle's own README: unpack the source, ``make setup-offline``,
``make run`` (notebook 01 here). pip gets no index and a proxy that refuses, the JVM a
proxy that refuses too, so any download would fail the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import time

import pytest

from workbook import bundle

pytestmark = pytest.mark.spark
REFUSING_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    target = tmp_path_factory.mktemp("bundle") / "workbook-bundle"
    done = bundle.build(target, [bundle.this_platform()])
    tarball_mb = target.with_suffix(".tar").stat().st_size >> 20
    print(f"\nbundle: {json.dumps(done)}; tarball {tarball_mb} MB")
    return target, done


def test_the_bundle_holds_wheels_jars_source_and_steps(built):
    target, done = built
    assert done["wheels"] >= 150 and set(done["jars"]) == {"local"}
    listed = (target / "jars" / "local.txt").read_text().split()
    assert any(jar.startswith("io.delta_delta-spark") for jar in listed)
    assert all((target / "jars" / jar).is_file() for jar in listed)
    assert "make setup-offline BUNDLE=" in (target / "README.md").read_text()
    with tarfile.open(target.with_suffix(".tar")) as tar:
        assert f"{target.name}/source.tar" in tar.getnames()


def test_installed_from_the_bundle_notebook_01_runs_offline(built, tmp_path):
    target, _ = built
    checkout = tmp_path / "workbook"
    checkout.mkdir()
    with tarfile.open(target / "source.tar") as tar:
        tar.extractall(checkout, filter="data")
    ours = ("WORKBOOK_", "PIP_", "VIRTUAL_ENV")
    offline = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    offline |= {
        "PIP_NO_INDEX": "1",
        "PIP_PROXY": REFUSING_PROXY,
        "HTTP_PROXY": REFUSING_PROXY,
        "HTTPS_PROXY": REFUSING_PROXY,
        "JAVA_TOOL_OPTIONS": "-Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort=9 "
        "-Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort=9",
    }

    def make(*args: str) -> float:
        started = time.perf_counter()
        done = subprocess.run(
            ["make", "--no-print-directory", *args],
            cwd=checkout,
            env=offline,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        return time.perf_counter() - started

    install = make("setup-offline", f"BUNDLE={target}")
    run = make("run", "ARGS=--only 01_ingest --rows 20000 --days 7")
    print(f"\ninstall from the bundle {install:.0f} s; notebook 01 {run:.0f} s")
    summary = json.loads((checkout / "runs" / "latest" / "summary.json").read_text())
    assert summary["wall_seconds"]["01_ingest"] > 0
    spark_log = (checkout / "lakehouse" / "_logs" / "spark.log").read_text()
    assert "resolving dependencies" not in spark_log.lower(), "Spark resolved packages"
    assert f"WORKBOOK_SPARK_JARS={target}/jars" in (checkout / ".env").read_text()
