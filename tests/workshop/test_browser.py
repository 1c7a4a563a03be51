"""The learner's path in a real browser: JupyterLab in headless Chromium, Run > Run All Cells.

JupyterLab serves the learner's copies (``make learner-copies``) on a fresh lakehouse. Each
notebook is opened, run from the Run menu, saved; the saved notebook must have every code
cell executed, in order, and no error output. A screenshot of its last plot is kept under
``runs/browser/<time>/``. The copies run at the smoke suite's size (the parameters a learner
would change, injected as papermill does), so 06 runs three days.

Needs Debian's ``chromium`` (``make browser``); the figures per notebook are printed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import nbformat
import pytest
import quick_workbook

from workbook import workshop
from workbook.config import REPO_ROOT
from workbook.launcher import free_port
from workbook.run import NOTEBOOKS, notebook_parameters

pytestmark = pytest.mark.spark
CHROMIUM = Path(os.environ.get("WORKBOOK_CHROMIUM", "/usr/bin/chromium"))
# The smoke suite's size (``quick_workbook``): the learner's path, not the model's accuracy,
# is under test here.
SIZE = {
    "n_transactions": quick_workbook.ROWS,
    "days": quick_workbook.DAYS,
    "seed": quick_workbook.SEED,
    "loop_days": quick_workbook.LOOP_DAYS,
    "drift_from_day": quick_workbook.DRIFT_FROM_DAY,
    "label_delay_days": quick_workbook.LABEL_DELAY,
}
NOTEBOOK_TIMEOUT_S = 900
# Cells queued or running show [*] in their prompt.
RUNNING = (
    "Array.from(document.querySelectorAll('.jp-InputPrompt'))"
    ".filter(p => p.textContent.includes('[*]')).length"
)
SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false"},
}
# Chromium on a closed network: no background calls, no sandbox (CI runs as root).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """JupyterLab on the learner's copies and a fresh lakehouse, as `make lab` starts it."""
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: run `make browser` (Debian's chromium)")
    learner = tmp_path_factory.mktemp("learner")
    lakehouse = tmp_path_factory.mktemp("browser-lakehouse")
    workshop.learner_copies(learner)
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    for name in NOTEBOOKS:
        path = learner / f"{name}.ipynb"
        wanted = notebook_parameters(path, SIZE)
        sized = parameterize_notebook(load_notebook_node(str(path)), wanted)
        nbformat.write(sized, path)
    # JupyterLab's settings and workspaces of its own (none restored from an earlier session):
    # every cell rendered (not only those in view, so the last plot can be found), and no
    # news fetched from the network.
    settings = tmp_path_factory.mktemp("jupyterlab-settings")
    for plugin, values in SETTINGS.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "WORKBOOK_LAKEHOUSE": str(lakehouse), "WORKBOOK_PROFILE": "local",
           "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path_factory.mktemp("workspaces"))}  # fmt: skip
    log = open(tmp_path_factory.mktemp("logs") / "jupyterlab.log", "w")  # noqa: SIM115
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
         f"--port={port}", f"--IdentityProvider.token={token}", "--allow-root",
         f"--ServerApp.root_dir={learner}"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    api = httpx.Client(base_url=url, headers={"Authorization": f"token {token}"}, timeout=30)
    deadline = time.monotonic() + 120
    while True:
        try:
            if api.get("/api/status").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert server.poll() is None and time.monotonic() < deadline, "JupyterLab did not start"
        time.sleep(0.5)
    yield url, token, api, lakehouse
    server.terminate()
    server.wait(60)
    log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def screenshots() -> Path:
    folder = REPO_ROOT / "runs" / "browser" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder.mkdir(parents=True)
    return folder


def from_the_menu(page, menu: str, item: str) -> None:
    """Click ``menu`` in the menu bar, then its ``item`` (a name followed by its shortcut)."""
    page.get_by_role("menuitem", name=menu, exact=True).click()
    page.get_by_role("menuitem", name=re.compile(f"^{item}( |$)(?!As)")).click()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_a_learner_runs_the_notebook_in_jupyterlab(name, jupyterlab, browser, screenshots):
    url, token, api, _ = jupyterlab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    # A workspace of its own: JupyterLab reopens nothing from the notebook before.
    page.goto(f"{url}/lab/workspaces/{name}/tree/{name}.ipynb?token={token}")
    notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    try:
        notebook.locator(".jp-Cell").first.wait_for(timeout=120_000)
        page.get_by_text(re.compile(r"\| Idle$")).wait_for(timeout=120_000)  # the kernel is up
        started = time.perf_counter()
        from_the_menu(page, "Run", "Run All Cells")
        page.wait_for_function(f"() => {RUNNING} > 0", timeout=60_000)
        page.wait_for_function(
            f"() => {RUNNING} == 0", timeout=NOTEBOOK_TIMEOUT_S * 1000, polling=1000
        )
    except Exception:
        page.screenshot(path=screenshots / f"{name}-failed.png")
        raise
    seconds = time.perf_counter() - started
    plots = notebook.locator(".jp-OutputArea-output img")
    if plots.count():
        plots.last.scroll_into_view_if_needed()
        plots.last.screenshot(path=screenshots / f"{name}.png")
    before = api.get(f"/api/contents/{name}.ipynb?content=0").json()["last_modified"]
    from_the_menu(page, "File", "Save Notebook")
    deadline = time.monotonic() + 60
    while api.get(f"/api/contents/{name}.ipynb?content=0").json()["last_modified"] == before:
        assert time.monotonic() < deadline, "the notebook was not saved"
        time.sleep(0.5)
    page.close()
    for kernel in api.get("/api/kernels").json():  # its JVM's memory, for the next notebook
        api.delete(f"/api/kernels/{kernel['id']}")
    print(f"\n{name}: {seconds:.0f} s in JupyterLab")

    saved = nbformat.from_dict(api.get(f"/api/contents/{name}.ipynb").json()["content"])
    code = [c for c in saved.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{name}: {errors[0].ename}: {errors[0].evalue}"
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "a cell not run"
    if any(o.get("data", {}).get("image/png") for c in code for o in c.outputs):
        assert (screenshots / f"{name}.png").stat().st_size > 10_000, "the last plot is missing"
