"""The Compose stack agrees with .env.example and the library.

No Docker engine is needed: a real Compose implementation (`docker compose` or Debian's
`docker-compose`) validates the file and resolves it with `.env.example`, and the checks
read that resolved configuration. Each check returns the problems it finds, so the
negative tests can show that a wrong port, a literal secret or a floating tag is caught.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from workbook import names, registry

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "stack" / "jupyter" / "Dockerfile"
DOCKERFILES = (DOCKERFILE, REPO / "stack" / "mlflow" / "Dockerfile")

ONE_SHOT = {"minio-init", "kafka-init"}
# Interpolation would let the caller's environment override the env file: keep it out.
PASSED_ENV = ("PATH", "HOME", "DOCKER_CONFIG")
SECRET_VARIABLE = re.compile(r"(PASSWORD|SECRET|TOKEN)")
CREDENTIAL_KEY = re.compile(r"(PASSWORD|SECRET|SECRET_KEY|TOKEN|ACCESS_KEY|_USER|^PGUSER)$")
VARIABLE_REFERENCE = re.compile(r"^\$\{(?P<name>[A-Z][A-Z0-9_]*):\?[^}]+\}$")
# An exact release: a MAJOR.MINOR version or a MinIO RELEASE date, never a moving tag.
PINNED_TAG = re.compile(r"(\d+\.\d+|RELEASE\.\d{4}-\d\d-\d\dT)")


def read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip()
    return env


def compose_command() -> list[str]:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail(
        "Neither `docker compose` nor `docker-compose` is installed, so the Compose file "
        "cannot be validated: apt-get install docker-compose (or Docker's compose plugin)."
    )


def run_config(compose_file: Path, env_file: Path) -> subprocess.CompletedProcess:
    env = {key: os.environ[key] for key in PASSED_ENV if key in os.environ}
    return subprocess.run(
        [
            *compose_command(),
            "--file",
            str(compose_file),
            "--project-directory",
            str(REPO),
            "--env-file",
            str(env_file),
            "config",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )


def resolve(compose_file: Path = COMPOSE_FILE, env_file: Path = ENV_EXAMPLE) -> dict:
    result = run_config(compose_file, env_file)
    assert result.returncode == 0, f"compose config failed:\n{result.stderr.strip()}"
    return yaml.safe_load(result.stdout)


def port_of(address: str) -> int:
    if "://" not in address:
        address = f"tcp://{address}"
    return urlsplit(address.split(",")[0]).port


def published_ports(service: dict) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of a resolved service, in either syntax."""
    ports = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):  # Compose v2: long syntax
            ports.append((entry.get("host_ip", ""), int(entry["published"]), int(entry["target"])))
        else:  # docker-compose 1.x: "host_ip:published:target/protocol"
            host_ip, published, target = str(entry).split("/")[0].rsplit(":", 2)
            ports.append((host_ip, int(published), int(target)))
    return ports


def mounts(service: dict) -> dict[str, tuple[str, str]]:
    """target: (type, source) of a resolved service's volumes, in either syntax."""
    found = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):  # Compose v2: long syntax
            found[entry["target"]] = (entry["type"], entry.get("source", ""))
        else:  # docker-compose 1.x: "source:target[:mode]", a named volume has no slash
            source, target = str(entry).split(":")[:2]
            found[target] = ("bind" if "/" in source else "volume", source)
    return found


def expected_ports(env: dict[str, str]) -> dict[tuple[str, int], int]:
    """(service, container port) -> the host port that .env.example gives its clients."""
    return {
        ("minio", 9000): port_of(env["S3_ENDPOINT"]),
        ("minio", 9001): int(env["MINIO_CONSOLE_PORT"]),
        ("postgres", 5432): int(env["PGPORT"]),
        ("kafka", 29092): port_of(env["KAFKA_BOOTSTRAP_SERVERS"]),
        ("spark-master", 8080): int(env["SPARK_MASTER_WEBUI_PORT"]),
        ("spark-worker", 8081): int(env["SPARK_WORKER_WEBUI_PORT"]),
        ("jupyterlab", 8888): int(env["JUPYTER_PORT"]),
        ("serving", 8000): int(env["SERVING_PORT"]),
        ("mlflow", 5000): port_of(env["MLFLOW_TRACKING_URI"]),
        ("prometheus", 9090): int(env["PROMETHEUS_PORT"]),
        ("grafana", 3000): int(env["GRAFANA_PORT"]),
        ("airflow", 8080): int(env["AIRFLOW_PORT"]),
    }


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def command_text(service: dict) -> str:
    command = service.get("command") or []
    return command if isinstance(command, str) else " ".join(map(str, command))


# Checks: each returns a list of problems, empty when the stack is right.


def port_problems(config: dict, env: dict[str, str]) -> list[str]:
    expected = expected_ports(env)
    problems, seen = [], set()
    for name, service in config["services"].items():
        for host_ip, published, target in published_ports(service):
            seen.add((name, target))
            if host_ip != env["BIND_ADDRESS"]:
                problems.append(f"{name}:{target} binds to {host_ip!r}, not BIND_ADDRESS")
            if (name, target) not in expected:
                problems.append(f"{name}:{target} is published but matches no .env.example port")
            elif published != expected[(name, target)]:
                problems.append(
                    f"{name}:{target} is published on {published}, .env.example says "
                    f"{expected[(name, target)]}"
                )
    problems += [f"{n}:{t} is not published" for n, t in expected if (n, t) not in seen]
    return problems


def credential_problems(raw: dict, env: dict[str, str]) -> list[str]:
    """Credentials in the file as written: each one a ${VAR:?...} of .env.example."""
    problems = []
    for name, service in raw["services"].items():
        for key, value in environment(service).items():
            if not CREDENTIAL_KEY.search(key):
                continue
            match = VARIABLE_REFERENCE.match(value)
            if not match:
                problems.append(f"{name}: {key} is {value!r}, not a ${{VAR:?...}} reference")
            elif match["name"] not in env:
                problems.append(f"{name}: {key} refers to {match['name']}, not in .env.example")
    return problems


def literal_secret_problems(texts: dict[str, str], env: dict[str, str]) -> list[str]:
    secrets = {k: v for k, v in env.items() if SECRET_VARIABLE.search(k) and v}
    return [
        f"{where} contains the value of {key}"
        for where, text in texts.items()
        for key, value in secrets.items()
        if value in text
    ]


def image_problems(config: dict) -> list[str]:
    problems = []
    for name, service in config["services"].items():
        image = service.get("image", "")
        if "build" in service:
            if image.endswith(":latest") or ":" not in image:
                problems.append(f"{name}: the built image needs an explicit tag, not {image!r}")
            continue
        tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
        if "bitnami" in image:
            problems.append(f"{name}: {image!r} is a Bitnami image (legacy, unmaintained)")
        elif not PINNED_TAG.search(tag):
            problems.append(f"{name}: {image!r} is not pinned to a release")
    return problems


def bucket_problems(config: dict) -> list[str]:
    script = command_text(config["services"]["minio-init"])
    created = re.findall(r"mc mb --ignore-existing \S+/([a-z0-9.-]+)", script)
    problems = []
    if sorted(created) != sorted(names.BUCKETS):
        problems.append(f"minio-init creates {sorted(created)}, workbook.names has {names.BUCKETS}")
    if script.count("mc mb") != len(created):
        problems.append("every `mc mb` needs --ignore-existing, so a restart succeeds")
    return problems


def topic_problems(config: dict) -> list[str]:
    command = config["services"]["kafka-init"].get("command") or []
    args = command.split() if isinstance(command, str) else [str(a) for a in command]
    topic = args[args.index("--topic") + 1] if "--topic" in args else None
    problems = []
    if topic != names.TRANSACTIONS_TOPIC:
        problems.append(f"kafka-init creates {topic!r}, not {names.TRANSACTIONS_TOPIC!r}")
    if "--if-not-exists" not in args:
        problems.append("kafka-init needs --if-not-exists, so a restart succeeds")
    return problems


def startup_problems(config: dict) -> list[str]:
    services = config["services"]
    problems = []
    for name, service in services.items():
        if name not in ONE_SHOT and not (service.get("healthcheck") or {}).get("test"):
            problems.append(f"{name} has no healthcheck")
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            problems.append(f"{name}: depends_on without conditions")
            continue
        for dependency, spec in depends.items():
            wanted = (
                "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            )
            if (spec or {}).get("condition") != wanted:
                problems.append(f"{name} must wait for {dependency} with {wanted}")
    return problems


# The stack as committed.


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return read_env(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def config() -> dict:
    return resolve()


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_compose_file_is_valid(config):
    assert {"minio", "postgres", "kafka", "spark-master", "spark-worker", "jupyterlab"} <= set(
        config["services"]
    )


def test_no_version_key(raw):
    assert "version" not in raw, "the Compose specification has no `version:` key"


def test_missing_setting_fails_with_its_name(tmp_path):
    env_file = tmp_path / "partial.env"
    lines = ENV_EXAMPLE.read_text().splitlines()
    env_file.write_text("\n".join(x for x in lines if not x.startswith("S3_SECRET_KEY=")))
    result = run_config(COMPOSE_FILE, env_file)
    assert result.returncode != 0
    assert "set it in .env" in result.stderr


def test_published_ports_match_env_example(config, env):
    assert port_problems(config, env) == []


def test_published_ports_follow_bind_address(tmp_path, env):
    env_file = tmp_path / "elsewhere.env"
    example = ENV_EXAMPLE.read_text()
    text = re.sub(r"^BIND_ADDRESS=.*$", "BIND_ADDRESS=192.0.2.7", example, flags=re.M)
    env_file.write_text(text)
    services = resolve(env_file=env_file)["services"].values()
    addresses = {ip for service in services for ip, *_ in published_ports(service)}
    assert addresses == {"192.0.2.7"}


def test_credentials_are_references_to_env_example(raw, env):
    assert credential_problems(raw, env) == []


def test_no_literal_secrets(env):
    texts = {str(p.relative_to(REPO)): p.read_text() for p in (COMPOSE_FILE, *DOCKERFILES)}
    assert literal_secret_problems(texts, env) == []


def test_each_service_gets_its_own_role(config, env):
    services = {name: environment(service) for name, service in config["services"].items()}
    assert services["minio"]["MINIO_ROOT_USER"] == env["S3_ACCESS_KEY"]
    assert services["minio"]["MINIO_ROOT_PASSWORD"] == env["S3_SECRET_KEY"]
    assert services["postgres"]["POSTGRES_DB"] == env["PGDATABASE"]
    # Notebooks write features; the scoring service may only read them.
    assert services["jupyterlab"]["PGUSER"] == env["FEATURES_WRITER_USER"]
    assert services["serving"]["PGUSER"] == env["FEATURES_READER_USER"]
    assert services["serving"]["PGPASSWORD"] == env["FEATURES_READER_PASSWORD"]
    assert services["serving"]["FEATURES_READER_USER"] == env["FEATURES_READER_USER"]
    assert not {"POSTGRES_PASSWORD", "FEATURES_WRITER_PASSWORD"} & set(services["serving"])
    for name in ("jupyterlab", "serving"):
        assert services[name]["WORKBOOK_PROFILE"] == "stack"
        assert services[name]["PGHOST"] == "postgres"
    # The registry's database has a role of its own; the service needs no S3 keys.
    assert services["mlflow"]["MLFLOW_DB_USER"] == env["MLFLOW_DB_USER"]
    assert services["postgres"]["MLFLOW_DB_PASSWORD"] == env["MLFLOW_DB_PASSWORD"]
    assert not {"S3_ACCESS_KEY", "S3_SECRET_KEY"} & set(services["serving"])


def test_containers_use_the_internal_addresses(config, env):
    lab = environment(config["services"]["jupyterlab"])
    assert lab["S3_ENDPOINT"] == "http://minio:9000"
    assert lab["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert lab["SPARK_MASTER_URL"] == "spark://spark-master:7077"
    for name in ("jupyterlab", "serving"):
        assert environment(config["services"][name])["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    kafka = environment(config["services"]["kafka"])
    assert "INTERNAL://kafka:9092" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert f"HOST://{env['KAFKA_BOOTSTRAP_SERVERS']}" in kafka["KAFKA_ADVERTISED_LISTENERS"]


def test_buckets_match_the_library(config):
    assert bucket_problems(config) == []


def test_topic_matches_the_library(config):
    assert topic_problems(config) == []


def test_images_are_pinned(config):
    assert image_problems(config) == []


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_base_images_are_pinned(dockerfile):
    text = dockerfile.read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, flags=re.MULTILINE))
    assert bases, f"{dockerfile} has no FROM"
    for base in bases:
        pinned = base in stages or PINNED_TAG.search(base.rsplit(":", 1)[-1])
        assert pinned, f"{base} is not pinned"


def test_the_spark_master_matches_pyspark(config):
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pyspark = next(d for d in pyproject["project"]["dependencies"] if d.startswith("pyspark=="))
    version = pyspark.split("==")[1]
    assert config["services"]["spark-master"]["image"].startswith(f"apache/spark:{version}-")


def test_services_start_in_order(config):
    assert startup_problems(config) == []


def test_serving_waits_for_its_stores_and_checks_health(config):
    serving = config["services"]["serving"]
    assert {"postgres", "mlflow"} <= set(serving["depends_on"])
    assert "/health" in " ".join(serving["healthcheck"]["test"])


def test_prometheus_scrapes_the_service_and_grafana_reads_prometheus(config):
    services = config["services"]
    scrape = yaml.safe_load((REPO / "stack" / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in scrape["scrape_configs"] if j["job_name"] == "fraud-scoring"]
    assert job["static_configs"][0]["targets"] == ["serving:8000"]
    assert "alerts.yml" in scrape["rule_files"]
    assert mounts(services["prometheus"])["/etc/prometheus"][1] == str(
        REPO / "stack" / "prometheus"
    )
    sources = REPO / "stack" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    (source,) = yaml.safe_load(sources.read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["uid"] == "prometheus"
    provider = REPO / "stack" / "grafana" / "provisioning" / "dashboards" / "workbook.yml"
    (dashboards,) = yaml.safe_load(provider.read_text())["providers"]
    folder = mounts(services["grafana"])[dashboards["options"]["path"]]
    assert folder == ("bind", str(REPO / "stack" / "grafana" / "dashboards"))


def test_airflow_runs_the_dag_of_the_checkout_with_the_workbook(config):
    airflow = config["services"]["airflow"]
    folder = environment(airflow)["AIRFLOW__CORE__DAGS_FOLDER"]
    assert folder.startswith(next(t for t in mounts(airflow) if t.endswith("/orchestration")))
    assert airflow["build"]["target"] == "airflow" and airflow["hostname"] == "airflow"
    assert environment(airflow)["SPARK_MASTER_URL"] == "spark://spark-master:7077"


def test_driver_and_worker_share_the_model_staging_folder(config):
    """MLflow has Spark save a model into a local folder the driver then copies from."""
    target = f"/workbook/lakehouse/{registry.STAGING_FOLDER}"  # the image's lakehouse
    services = config["services"]
    jupyterlab, worker = services["jupyterlab"], services["spark-worker"]
    # Airflow's tasks are drivers too: the daily step's retraining saves models.
    drivers = (jupyterlab, services["airflow"], worker)
    shared = {mounts(service).get(target) for service in drivers}
    assert len(shared) == 1 and None not in shared, f"one volume for all at {target}: {shared}"
    kind, source = shared.pop()
    assert kind == "volume" and source in config["volumes"]
    # The driver moves and deletes what the executors wrote: the same user on both sides.
    assert str(worker.get("user")) == str(jupyterlab["build"]["args"]["WORKBOOK_UID"])


def test_executors_run_the_drivers_python_and_library(config):
    """The simulator's days run in Python on the executors: the worker runs the driver's
    image (its Python minor version, its packages) with the same library mounted."""
    services = config["services"]
    jupyterlab, worker = services["jupyterlab"], services["spark-worker"]
    assert worker["image"] == jupyterlab["image"]
    assert worker["build"] == jupyterlab["build"]
    library = "/workbook/lib"
    assert mounts(worker)[library][1] == mounts(jupyterlab)[library][1] == str(REPO / "lib")
    assert worker["command"][:2] == ["spark-class", "org.apache.spark.deploy.worker.Worker"]


# Each check catches what it guards: a broken copy of the file fails the check meant for it.

CHECKS = {
    "ports": lambda config, raw, env: port_problems(config, env),
    "credentials": lambda config, raw, env: credential_problems(raw, env),
    "images": lambda config, raw, env: image_problems(config),
    "buckets": lambda config, raw, env: bucket_problems(config),
    "topic": lambda config, raw, env: topic_problems(config),
    "startup": lambda config, raw, env: startup_problems(config),
}
BROKEN = {  # case: (text in docker-compose.yml, replacement, the check that must fail)
    "wrong port": (
        '"${BIND_ADDRESS:-127.0.0.1}:9000:9000"',
        '"${BIND_ADDRESS:-127.0.0.1}:9010:9000"',
        "ports",
    ),
    "fixed address": (
        '"${BIND_ADDRESS:-127.0.0.1}:${SERVING_PORT:?set it in .env}:8000"',
        '"0.0.0.0:${SERVING_PORT:?set it in .env}:8000"',
        "ports",
    ),
    "literal secret": ("${POSTGRES_PASSWORD:?set it in .env}", "not-from-env", "credentials"),
    "default secret": (
        "${S3_SECRET_KEY:?set it in .env}",
        "${S3_SECRET_KEY:-fallback}",
        "credentials",
    ),
    "floating tag": ("image: apache/kafka:4.1.1", "image: apache/kafka:latest", "images"),
    "legacy image": (
        "image: postgres:17.9-bookworm",
        "image: bitnami/postgresql:17.9.0",
        "images",
    ),
    "wrong bucket": ("workbook/models-bucket", "workbook/model-bucket", "buckets"),
    "wrong topic": ("      - transactions\n", "      - transaction\n", "topic"),
    "no health wait": ("condition: service_healthy", "condition: service_started", "startup"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_copy_is_caught(case, tmp_path, env):
    old, new, check = BROKEN[case]
    text = COMPOSE_FILE.read_text()
    assert old in text, f"the negative case {case!r} no longer applies to docker-compose.yml"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(old, new, 1))
    problems = CHECKS[check](resolve(broken), yaml.safe_load(broken.read_text()), env)
    assert problems, f"{case}: the {check} check did not notice"
