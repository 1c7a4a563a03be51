# One command to run the workbook, one to test it; both set up what they need first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# The MLflow server (stack) and UI (local) need the full mlflow package, whose pins conflict
# with the workbook's: they get an environment of their own.
MLFLOW_VENV := .venv-mlflow
MLFLOW_INSTALLED := $(MLFLOW_VENV)/.installed
MLFLOW_PORT ?= 5000
# Airflow runs the daily step (orchestration/dags); its pins conflict with the workbook's too.
AIRFLOW_VENV := .venv-airflow
AIRFLOW_INSTALLED := $(AIRFLOW_VENV)/.installed
AIRFLOW_PORT ?= 8088
AIRFLOW := AIRFLOW_HOME=$(CURDIR)/.airflow AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/orchestration/dags \
	AIRFLOW__CORE__LOAD_EXAMPLES=False $(AIRFLOW_VENV)/bin/airflow
ARGS ?=
# nbval runs every notebook as committed (06 for its 14 days) and compares the outputs.
NBVAL := --nbval notebooks --nbval-sanitize-with tests/nbval_sanitize.cfg

.PHONY: setup run test test-unit test-smoke test-notebooks jars lab lint format reset clean refresh-outputs \
	catch-up learner-copies lineage stop-postgres setup-offline bundle browser test-workshop \
	mlflow-env mlflow-ui airflow-env airflow-day airflow-ui test-orchestration stack-up stack-down stack-reset test-stack \
	test-reliability bench

$(INSTALLED): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 (or run make PYTHON=/path/to/python3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -c "from workbook.spark import check_java; check_java()"
	$(BIN)/python -m workbook.class_archive
	touch $@

setup: $(INSTALLED)  ## create .venv with the pinned packages, check Java, archive Spark's classes

$(MLFLOW_INSTALLED): stack/mlflow/requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11"; exit 1; }
	test -x $(MLFLOW_VENV)/bin/python || $(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MLFLOW_VENV)/bin/python -m pip install --quiet -r stack/mlflow/requirements.txt
	touch $@

$(AIRFLOW_INSTALLED): orchestration/requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11"; exit 1; }
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet -r orchestration/requirements.txt
	$(AIRFLOW) db migrate >/dev/null
	touch $@

# From a bundle (make bundle) on a machine without network: wheels and Spark's jars from it.
setup-offline:  ## install from an offline bundle: make setup-offline BUNDLE=/path/to/bundle
	@test -d "$(BUNDLE)/wheels" || { echo "name a folder made by make bundle: make setup-offline BUNDLE=/path/to/bundle"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-index --find-links "$(BUNDLE)/wheels" -e ".[dev]"
	$(BIN)/python -c "from workbook.spark import check_java; check_java()"
	test -f .env || cp .env.example .env
	sed -i.bak '/^WORKBOOK_SPARK_JARS=/d' .env && rm -f .env.bak
	echo "WORKBOOK_SPARK_JARS=$(abspath $(BUNDLE))/jars" >> .env
	touch $(INSTALLED)

# PLATFORMS: any of linux-x86_64 linux-aarch64 macos-arm64 macos-x86_64 (default: this one);
# the local profile's jars (ARGS="--profiles local stack" adds the stack's).
bundle: setup  ## the offline bundle for a workshop: bundle/ and bundle.tar (PLATFORMS="...")
	$(BIN)/python -m workbook.bundle $(if $(PLATFORMS),--platforms $(PLATFORMS)) $(ARGS)

mlflow-env: $(MLFLOW_INSTALLED)  ## create .venv-mlflow with the MLflow server (for mlflow-ui and the native stack)

mlflow-ui: mlflow-env  ## the MLflow UI on the local registry (lakehouse/_mlflow), on 127.0.0.1:$(MLFLOW_PORT)
	@test -f lakehouse/_mlflow/mlflow.db || { echo "no local registry yet: run notebook 03 (or make run) first"; exit 1; }
	$(MLFLOW_VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/lakehouse/_mlflow/mlflow.db \
		--host 127.0.0.1 --port $(MLFLOW_PORT)

airflow-env: $(AIRFLOW_INSTALLED)  ## create .venv-airflow with Airflow and its database in .airflow/

# Without a scheduler, as CI does; CONF sets the DAG's params, e.g. CONF='{"label_delay": 1}'.
airflow-day: setup airflow-env  ## the DAG for one day of the loop: make airflow-day DAY=2025-02-01
	@test -n "$(DAY)" || { echo "name the day, e.g. make airflow-day DAY=2025-02-01"; exit 2; }
	$(AIRFLOW) dags test workbook_daily_step $(DAY) $(if $(CONF),--conf '$(CONF)')

airflow-ui: setup airflow-env  ## Airflow (UI, scheduler) on 127.0.0.1:$(AIRFLOW_PORT); the DAG starts paused
	AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT=$(AIRFLOW_PORT) $(AIRFLOW) standalone

run: setup  ## run notebooks 01-06 headless; e.g. make run ARGS="--rows 50000 --seed 7"
	$(BIN)/python -m workbook.run $(ARGS)

catch-up: setup  ## run the notebooks before UNTIL headless on your lakehouse: make catch-up UNTIL=03
	@test -n "$(UNTIL)" || { echo "name the notebook to catch up to, e.g. make catch-up UNTIL=03"; exit 2; }
	$(BIN)/python -m workbook.run --until $(UNTIL) $(ARGS)

learner-copies: setup  ## the notebooks without outputs in learner/, to work in (yours are kept)
	$(BIN)/python -m workbook.workshop $(ARGS)

test: lint test-unit test-smoke test-notebooks  ## lint, the library, the workbook's summary, nbval

# Two workers, each with its own Spark and lakehouse: the suite waits on Spark's driver more
# than on the cores. Schemathesis gives all its fuzzed operations one test id, of which
# pytest-xdist would run only one: the fuzzer runs on its own.
test-unit: setup
	$(BIN)/python -m pytest tests/unit -q -n 2 --dist loadfile --ignore=tests/unit/test_api_fuzz.py
	$(BIN)/python -m pytest tests/unit/test_api_fuzz.py -q

test-smoke: setup  ## the whole workbook at a small size: its summary's metrics within tolerances
	$(BIN)/python -m pytest tests/smoke -q

test-notebooks: setup
	$(BIN)/python -m pytest $(NBVAL) -q

stack-up: setup mlflow-env  ## start the stack's services natively on 127.0.0.1 (no Docker needed)
	stack/native/up.sh

stack-down:  ## stop the native services (data kept; stack/native/down.sh --purge deletes it)
	stack/native/down.sh

stack-reset: setup  ## empty the stack's buckets, topic and feature tables (Compose or native)
	WORKBOOK_PROFILE=stack $(BIN)/python -m workbook.services reset

# The notebooks first, on emptied services; the stack tests then find their tables.
test-stack: setup stack-reset  ## the stack suite, against running services (make stack-up)
	WORKBOOK_PROFILE=stack $(BIN)/python -m pytest $(NBVAL) -q
	WORKBOOK_PROFILE=stack $(BIN)/python -m pytest tests/stack -q

# Debian's Chromium and its driver, for the browser test (root, or sudo, installs them).
browser:  ## install Debian's chromium for the learner's path test (apt-get)
	@test -x /usr/bin/chromium || { \
		sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			chromium chromium-driver >/dev/null; }
	@/usr/bin/chromium --version

# The platforms' wheels, the offline bundle installed and run with no network, the learner's
# path in JupyterLab; prints the figures (bundle size, install time, seconds per notebook).
test-workshop: setup browser  ## the workshop kit: platforms, offline bundle, JupyterLab in Chromium
	$(BIN)/python -m pytest tests/workshop -q -s

test-orchestration: setup airflow-env  ## the Airflow DAG against the loop, for three days (airflow dags test)
	$(BIN)/python -m pytest tests/orchestration -q -s

test-reliability: setup  ## hostile input, killed processes, failing services, secrets; ends with a summary line
	$(BIN)/python -m pytest tests/reliability -q

bench: setup  ## benchmarks -> benchmarks/results/latest.json and plots (ARGS="--quick" to smoke-test)
	$(BIN)/python -m benchmarks.run $(ARGS)

jars: setup  ## fetch the Spark packages into the local Ivy cache, to work offline afterwards
	$(BIN)/python -m workbook.spark

# A learner works in copies (learner/), so the committed outputs stay what nbval compares;
# LAB_DIR=notebooks opens the committed notebooks. The local PostgreSQL the notebooks start
# stops when JupyterLab does (Ctrl-C included: the shell handles INT, so it outlives
# JupyterLab and runs its EXIT trap).
LAB_DIR ?= learner
lab: setup  ## JupyterLab on your copies of the notebooks (learner/; LAB_DIR=notebooks: the committed ones)
	@test "$(LAB_DIR)" != learner || $(BIN)/python -m workbook.workshop
	trap '$(MAKE) --no-print-directory stop-postgres' EXIT; trap : INT; trap exit HUP TERM; \
		$(BIN)/jupyter lab $(LAB_DIR)

lineage: setup  ## print the lineage of your lakehouse's tables and draw it (lakehouse/_lineage/graph.png)
	$(BIN)/python -m workbook.lineage

stop-postgres:  ## stop the local profile's PostgreSQL (the next notebook that needs it starts it)
	@test ! -x $(BIN)/python || $(BIN)/python -m workbook.local_postgres stop

lint: setup
	$(BIN)/ruff check lib tests notebooks benchmarks orchestration conftest.py
	$(BIN)/ruff format --check lib tests notebooks benchmarks orchestration conftest.py

format: setup
	$(BIN)/ruff check --fix lib tests notebooks benchmarks orchestration conftest.py
	$(BIN)/ruff format lib tests notebooks benchmarks orchestration conftest.py

reset: stop-postgres  ## delete the local lakehouse (tables, checkpoints, landed events, registry) and the local database
	rm -rf lakehouse

clean: reset
	rm -rf runs $(VENV) $(MLFLOW_VENV) $(AIRFLOW_VENV) .airflow

refresh-outputs: setup  ## re-execute every notebook on a fresh lakehouse and keep the outputs (what nbval compares)
	tmp=$$(mktemp -d) && WORKBOOK_LAKEHOUSE=$$tmp $(BIN)/jupyter nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.record_timing=False --ExecutePreprocessor.timeout=1800 notebooks/0*.ipynb; \
		status=$$?; WORKBOOK_LAKEHOUSE=$$tmp $(BIN)/python -m workbook.local_postgres stop; \
		rm -rf $$tmp; exit $$status
