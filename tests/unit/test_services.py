"""Stack services: addresses from the environment, and the message when one is down."""

from __future__ import annotations

import socket

import pytest

from workbook import config, services
from workbook.config import MissingSettingError


@pytest.fixture
def closed_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("S3_ENDPOINT", "http://127.0.0.1:9000", ("127.0.0.1", 9000)),
        ("S3_ENDPOINT", "https://s3.example.internal", ("s3.example.internal", 443)),
        ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092,127.0.0.1:9094", ("127.0.0.1", 9092)),
        ("SPARK_MASTER_URL", "spark://spark-master:7077", ("spark-master", 7077)),
    ],
)
def test_addresses_come_from_the_environment(monkeypatch, variable, value, expected):
    monkeypatch.setenv(variable, value)
    service = next(s for s in services.SERVICES.values() if s.variable == variable)
    assert service.address() == expected


def test_postgres_address_is_host_and_port(monkeypatch):
    monkeypatch.setenv("PGHOST", "db.internal")
    monkeypatch.setenv("PGPORT", "6543")
    assert services.SERVICES["postgres"].address() == ("db.internal", 6543)


def test_a_missing_setting_is_named(monkeypatch):
    monkeypatch.setattr(config, "load_dotenv", lambda: None)  # as before `make stack-up` made .env
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    with pytest.raises(MissingSettingError, match="KAFKA_BOOTSTRAP_SERVERS is not set.*env"):
        services.require("kafka")


@pytest.mark.parametrize(
    ("name", "variable", "template"),
    [
        ("s3", "S3_ENDPOINT", "http://127.0.0.1:{port}"),
        ("kafka", "KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:{port}"),
        ("spark", "SPARK_MASTER_URL", "spark://127.0.0.1:{port}"),
        ("postgres", "PGPORT", "{port}"),
    ],
)
def test_a_down_service_is_named_with_its_address_and_how_to_start_it(
    monkeypatch, closed_port, name, variable, template
):
    monkeypatch.setenv("PGHOST", "127.0.0.1")
    monkeypatch.setenv(variable, template.format(port=closed_port))
    with pytest.raises(services.ServiceUnavailableError) as failure:
        services.require(name)
    message = str(failure.value)
    service = services.SERVICES[name]
    assert message.startswith(f"{service.title} is not reachable at 127.0.0.1:{closed_port}")
    assert "make stack-up" in message
    assert f"docker compose up -d {service.compose_service}" in message
    assert variable in message or name == "postgres"


def test_a_listening_service_passes(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{server.getsockname()[1]}")
        services.require("kafka")
