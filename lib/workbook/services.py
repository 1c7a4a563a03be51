"""The stack's services: where each one is, and one clear message when it is down.

Checked before first use (a session start, a produce, a connection), so a notebook fails in
the cell that needs the service, with its name, the address tried and how to start it,
instead of a timeout deep inside Spark or a client library.
"""

from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from workbook.config import required


class ServiceUnavailableError(RuntimeError):
    """A service of the stack profile does not answer."""


@dataclass(frozen=True)
class Service:
    title: str
    variable: str  # the setting that holds its address
    compose_service: str

    def address(self) -> tuple[str, int]:
        value = required(self.variable)
        if self.variable == "PGHOST":
            return value, int(required("PGPORT"))
        first = value.split(",")[0].strip()
        if "://" not in first:
            first = f"tcp://{first}"
        parts = urlsplit(first)
        default = {"http": 80, "https": 443}.get(parts.scheme)
        if not parts.hostname or (parts.port or default) is None:
            raise ValueError(f"{self.variable}={value!r} has no host:port")
        return parts.hostname, parts.port or default

    def unavailable(self, reason: object) -> ServiceUnavailableError:
        host, port = self.address()
        return ServiceUnavailableError(
            f"{self.title} is not reachable at {host}:{port} ({reason}). Start it with "
            f"`make stack-up` (native services) or `docker compose up -d {self.compose_service}`"
            f"; its address is {self.variable} in .env."
        )


SERVICES = {
    "s3": Service("S3 object storage (MinIO or S3Proxy)", "S3_ENDPOINT", "minio"),
    "kafka": Service("Kafka", "KAFKA_BOOTSTRAP_SERVERS", "kafka"),
    "postgres": Service("PostgreSQL (online feature store)", "PGHOST", "postgres"),
    "spark": Service("The Spark standalone master", "SPARK_MASTER_URL", "spark-master"),
    "mlflow": Service(
        "The MLflow tracking server (model registry)", "MLFLOW_TRACKING_URI", "mlflow"
    ),
}


def require(name: str, timeout: float = 3.0) -> None:
    """Raise ``ServiceUnavailableError`` unless service ``name`` accepts a connection."""
    service = SERVICES[name]
    try:
        with socket.create_connection(service.address(), timeout=timeout):
            pass
    except OSError as error:
        raise service.unavailable(error.strerror or error) from None


def is_loopback(name: str) -> bool:
    host, _ = SERVICES[name].address()
    return host in ("localhost", "127.0.0.1", "::1")


def s3_client():
    """The ``minio`` SDK client for the S3 endpoint (any S3 server, not only MinIO)."""
    from minio import Minio

    from workbook.config import get_settings

    require("s3")
    settings = get_settings()
    parts = urlsplit(settings.s3_endpoint)
    access_key, secret_key = settings.s3_credentials
    return Minio(parts.netloc, access_key, secret_key, secure=parts.scheme == "https")


def empty_buckets() -> int:
    """Delete every object of the workbook's buckets (creating missing ones); returns how many."""
    from minio.deleteobjects import DeleteObject

    from workbook import names

    client = s3_client()
    deleted = 0
    for bucket in names.BUCKETS:
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
            continue
        objects = [DeleteObject(o.object_name) for o in client.list_objects(bucket, recursive=True)]
        errors = list(client.remove_objects(bucket, objects))
        if errors:
            raise RuntimeError(f"could not empty bucket {bucket}: {errors[0]}")
        deleted += len(objects)
    return deleted


def recreate_topic(partitions: int = 3, timeout: float = 30.0) -> None:
    """Delete the transactions topic and create it empty (the broker deletes asynchronously)."""
    import time

    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    from workbook import intake, names
    from workbook.config import get_settings

    require("kafka")
    admin = AdminClient(
        {
            "bootstrap.servers": get_settings().kafka_bootstrap_servers,
            "logger": intake.client_log("kafka-admin"),
        }
    )
    topic = names.TRANSACTIONS_TOPIC
    if topic in admin.list_topics(timeout=10).topics:
        admin.delete_topics([topic])[topic].result()
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result()
            return
        except KafkaException as error:  # still being deleted: try again shortly
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not recreate Kafka topic {topic}: {error}") from None
            time.sleep(0.5)


def reset() -> None:
    """Empty the stack for a fresh start: buckets, topic, online tables and the registry."""
    from workbook import lineage, registry, store

    print(f"S3: {empty_buckets():,} objects deleted from the workbook's buckets")
    recreate_topic()
    print("Kafka: topic recreated empty")
    conn = store.connect()
    try:
        store.drop_tables(conn)
    finally:
        conn.close()
    print("PostgreSQL: online tables dropped")
    print(f"MLflow: registered model deleted, {registry.reset():,} runs deleted")
    shutil.rmtree(lineage.folder(), ignore_errors=True)  # the lineage of what was deleted
    print(f"Lineage: {lineage.folder()} emptied")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["reset"]:
        sys.exit("usage: python -m workbook.services reset")
    reset()
