"""Settings for the two profiles, read from the environment (and a ``.env`` file).

``local`` (the default) keeps every table under one lakehouse folder that mirrors the
bucket layout; ``stack`` addresses the same tables as ``s3a://<bucket>/...`` and reads its
endpoints and credentials from the environment (see ``.env.example``). Only these edges
differ between profiles.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILES = ("local", "stack")


class MissingSettingError(RuntimeError):
    """A setting the stack profile needs is not in the environment."""


def load_dotenv(path: Path = REPO_ROOT / ".env") -> None:
    """Export ``KEY=value`` lines of ``path`` that the environment does not set already."""
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            os.environ.setdefault(key.strip(), value.strip().strip("'\""))


@dataclass(frozen=True)
class Settings:
    profile: str
    lakehouse: Path
    postgres_dir: Path
    shuffle_partitions: int
    driver_memory: str
    executor_memory: str
    jvm_options: str
    executor_jvm_options: str
    spark_jars: Path | None = None  # an offline bundle's jars/ (make bundle), else Maven

    def location(self, table: tuple[str, str]) -> str:
        """Where a (bucket, name) location lives in this profile."""
        bucket, name = table
        if self.profile == "stack":
            return f"s3a://{bucket}/{name}"
        return str(self.lakehouse / bucket / name)

    @property
    def spark_master(self) -> str:
        return required("SPARK_MASTER_URL") if self.profile == "stack" else "local[*]"

    @property
    def s3_endpoint(self) -> str:
        return required("S3_ENDPOINT")

    @property
    def s3_credentials(self) -> tuple[str, str]:
        return required("S3_ACCESS_KEY"), required("S3_SECRET_KEY")

    @property
    def kafka_bootstrap_servers(self) -> str:
        return required("KAFKA_BOOTSTRAP_SERVERS")


def required(name: str) -> str:
    """A stack setting from the environment; its absence is named, with where to set it."""
    load_dotenv()
    value = os.environ.get(name)
    if not value:
        raise MissingSettingError(
            f"{name} is not set: copy .env.example to .env (make stack-up does it) "
            "and adjust it, or export the variable."
        )
    return value


def get_settings() -> Settings:
    load_dotenv()
    profile = os.environ.get("WORKBOOK_PROFILE", "local")
    if profile not in PROFILES:
        raise ValueError(f"WORKBOOK_PROFILE={profile!r}; expected one of {', '.join(PROFILES)}")
    lakehouse = Path(os.environ.get("WORKBOOK_LAKEHOUSE", REPO_ROOT / "lakehouse")).resolve()
    return Settings(
        profile=profile,
        lakehouse=lakehouse,
        postgres_dir=Path(os.environ.get("WORKBOOK_POSTGRES_DIR", lakehouse / "_postgres")),
        shuffle_partitions=int(os.environ.get("WORKBOOK_SHUFFLE_PARTITIONS", "8")),
        driver_memory=os.environ.get("WORKBOOK_DRIVER_MEMORY", "2g"),
        executor_memory=os.environ.get("WORKBOOK_EXECUTOR_MEMORY", "2g"),
        spark_jars=Path(jars) if (jars := os.environ.get("WORKBOOK_SPARK_JARS")) else None,
        # The JVM's full JIT: with the quick JIT alone (-XX:TieredStopAtLevel=1) a daily step
        # of 06 took about 30 s instead of 20, and 01-05 193 s instead of 170 (two cores).
        # A long-lived JVM (a test session, the runner's shared kernel) generates much code:
        # a larger code cache keeps it from running out ("Out of space in CodeCache").
        # The throughput collector: Java's default (G1) spends more of two cores on its
        # concurrent work. 01-05 took 125 s with it, 130 s with G1 (two runs each), and
        # peaked at 2.5 GB both times (G1: 2.5 and 3.1 GB).
        jvm_options=os.environ.get(
            "WORKBOOK_JVM_OPTIONS", "-XX:ReservedCodeCacheSize=512m -XX:+UseParallelGC"
        ),
        # A cluster's executors start with each application (each notebook on the stack) and
        # live shortly: there the quick JIT alone is faster (the stack's nbval of 01-05 took
        # 8.8 min with it, 9.7 min with the full JIT).
        executor_jvm_options=os.environ.get(
            "WORKBOOK_EXECUTOR_JVM_OPTIONS",
            "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=512m",
        ),
    )
