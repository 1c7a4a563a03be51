"""The headless runner: parameters, failure reporting and the summary."""

import argparse
import json
import subprocess
import sys
import time

import nbformat
import psutil
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from workbook import run


def write_notebook(path, *sources, parameters="size = 1"):
    cells = [new_code_cell(parameters, metadata={"tags": ["parameters"]})]
    cells += [new_code_cell(s) for s in sources]
    nbformat.write(
        new_notebook(
            cells=cells,
            metadata={
                "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                "language_info": {"name": "python"},
            },
        ),
        path,
    )


def test_only_declared_parameters_are_passed(tmp_path):
    write_notebook(tmp_path / "a.ipynb", parameters="n_transactions = 5\nseed = 1")
    overrides = {"n_transactions": 10, "seed": None, "days": 3}
    assert run.notebook_parameters(tmp_path / "a.ipynb", overrides) == {"n_transactions": 10}


def test_a_failing_notebook_stops_the_run_and_names_the_cell(tmp_path, monkeypatch, capsys):
    write_notebook(
        tmp_path / "first.ipynb", "from workbook import report\nreport.record(raw_rows=size)"
    )
    write_notebook(tmp_path / "second.ipynb", "x = 1", "raise ValueError('boom')")
    write_notebook(tmp_path / "third.ipynb", "open('third-ran', 'w')")
    monkeypatch.setenv(run.REPORT_ENV, "")  # main() sets it; restored after the test
    monkeypatch.setattr(run, "NOTEBOOK_DIR", tmp_path)
    monkeypatch.setattr(run, "NOTEBOOKS", ("first", "second", "third"))
    status = run.main(["--runs-dir", str(tmp_path / "runs")])
    assert status == 1
    err = capsys.readouterr().err
    assert "second failed in cell" in err and "ValueError: boom" in err
    assert not (tmp_path / "third-ran").exists()


def test_a_successful_run_writes_the_summary(tmp_path, monkeypatch):
    write_notebook(
        tmp_path / "only.ipynb", "from workbook import report\nreport.record(raw_rows=size)"
    )
    monkeypatch.setenv(run.REPORT_ENV, "")  # main() sets it; restored after the test
    monkeypatch.setattr(run, "NOTEBOOK_DIR", tmp_path)
    monkeypatch.setattr(run, "NOTEBOOKS", ("only",))
    assert run.main(["--runs-dir", str(tmp_path / "runs")]) == 0
    summary = json.loads((tmp_path / "runs" / "latest" / "summary.json").read_text())
    assert summary["rows"]["raw"] == 1
    assert set(summary["wall_seconds"]) == {"only", "total"}
    assert summary["peak_rss_mb"] > 0
    assert (tmp_path / "runs" / "latest" / "html" / "only.html").exists()


def test_notebooks_share_one_kernel_unless_asked_otherwise(tmp_path, monkeypatch):
    for name in ("first", "second"):
        record_pid = f"import os\nopen({str(tmp_path / name)!r}, 'w').write(str(os.getpid()))"
        # Over local sockets, not TCP: the kernel then has no plain-text warning to print.
        transport = (
            "from ipykernel.kernelapp import IPKernelApp\n"
            f"open({str(tmp_path / name)!r} + '.transport', 'w')"
            ".write(IPKernelApp.instance().transport)"
        )
        write_notebook(tmp_path / f"{name}.ipynb", record_pid, transport)
    monkeypatch.setenv(run.REPORT_ENV, "")  # main() sets it; restored after the test
    monkeypatch.setattr(run, "NOTEBOOK_DIR", tmp_path)
    monkeypatch.setattr(run, "NOTEBOOKS", ("first", "second"))

    def kernel_pids(*flags):
        assert run.main(["--runs-dir", str(tmp_path / "runs"), *flags]) == 0
        return {(tmp_path / name).read_text() for name in ("first", "second")}

    assert len(kernel_pids()) == 1
    assert len(kernel_pids("--kernel-per-notebook")) == 2
    assert {(tmp_path / f"{n}.transport").read_text() for n in ("first", "second")} == {"ipc"}


def test_catch_up_runs_the_notebooks_before_the_one_named(tmp_path, monkeypatch, capsys):
    names = ("01_first", "02_second", "03_third")
    for name in names:
        write_notebook(tmp_path / f"{name}.ipynb", f"open({str(tmp_path / name)!r}, 'w')")
    monkeypatch.setenv(run.REPORT_ENV, "")  # main() sets it; restored after the test
    monkeypatch.setattr(run, "NOTEBOOK_DIR", tmp_path)
    monkeypatch.setattr(run, "NOTEBOOKS", names)
    assert run.main(["--runs-dir", str(tmp_path / "runs"), "--until", "03"]) == 0
    assert [(tmp_path / n).exists() for n in names] == [True, True, False]
    assert "Catching up to 03_third: 01_first, 02_second" in capsys.readouterr().out
    assert run.notebook_named("3") == run.notebook_named("03_third") == "03_third"
    with pytest.raises(argparse.ArgumentTypeError):
        run.notebook_named("07")


# A process that fills 200 MB, then forks a copy that shares those pages and waits.
FORKED = """
import os, sys, time
held = bytearray(200 * 2**20)
for i in range(0, len(held), 4096):
    held[i] = 1
if os.fork() == 0:
    time.sleep(30)
    os._exit(0)
print("ready", flush=True)
time.sleep(30)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="shared pages counted on Linux")
def test_the_peak_counts_pages_a_fork_shares_once():
    def peak_with(child_code: str) -> float:
        child = subprocess.Popen([sys.executable, "-c", child_code], stdout=subprocess.PIPE)
        try:
            assert child.stdout.readline().strip() == b"ready"
            with run.PeakMemory(interval=0.1) as memory:
                time.sleep(1)
            return memory.peak_mb
        finally:
            for proc in psutil.Process(child.pid).children():
                proc.kill()
            child.kill()
            child.wait()

    alone = peak_with(FORKED.replace("if os.fork() == 0:", "if False:"))
    forked = peak_with(FORKED)
    assert alone > 200
    assert forked - alone < 50, f"the fork's shared 200 MB counted again: {alone} -> {forked}"
