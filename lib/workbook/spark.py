"""One way to get a Spark session with Delta Lake, for notebooks, tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from workbook import class_archive, lineage, services
from workbook.config import Settings, get_settings

MIN_JAVA = 17
DELTA_PACKAGE = "io.delta:delta-spark_4.1_2.13:4.3.1"
# Jars each profile needs from Maven Central; `make jars` fetches them ahead of time.
# hadoop-aws matches the Hadoop client bundled with pyspark; Kafka's connector matches Spark.
PACKAGES = {
    "local": [DELTA_PACKAGE, lineage.SPARK_PACKAGE],
    "stack": [
        DELTA_PACKAGE,
        lineage.SPARK_PACKAGE,
        "org.apache.hadoop:hadoop-aws:3.4.2",
        "org.apache.spark:spark-sql-kafka-0-10_2.13:4.1.1",
        "org.postgresql:postgresql:42.7.8",
    ],
}
LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")
# Through Hadoop's FileContext, a rename on a local disk first asks for the file's link
# status, which Hadoop learns by running `readlink`: a process forked from the driver for
# each streaming checkpoint file and each Delta commit, three to four per micro-batch. These
# rename through FileSystem instead, which is Java's own rename, as atomic on a local disk.
LOCAL_DISK_CONF = {
    "spark.sql.streaming.checkpointFileManagerClass": (
        "org.apache.spark.sql.execution.streaming.checkpointing.FileSystemBasedCheckpointFileManager"
    ),
    "spark.delta.logStore.file.impl": "io.delta.storage.LocalLogStore",
}


class JavaNotFoundError(RuntimeError):
    """No usable Java runtime for Spark."""


def java_major_version(java: str | None = None) -> int:
    """The major version of ``java`` (JAVA_HOME's, else the one on PATH)."""
    if java is None:
        home = os.environ.get("JAVA_HOME")
        java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    hint = (
        f"Spark needs Java {MIN_JAVA} or 21: install OpenJDK 17 (apt-get install "
        "openjdk-17-jdk-headless, or conda install -c conda-forge openjdk=17) and set JAVA_HOME."
    )
    if not java or not Path(java).exists():
        raise JavaNotFoundError(f"No Java runtime found. {hint}")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        raise JavaNotFoundError(f"Could not read the version of {java}: {out.strip()!r}. {hint}")
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 else major


def check_java() -> None:
    major = java_major_version()
    if major < MIN_JAVA:
        raise JavaNotFoundError(
            f"Java {major} is too old for Spark 4: install OpenJDK 17 or 21 and set JAVA_HOME."
        )


@contextlib.contextmanager
def _jvm_output_to(log_path: Path):
    """Send what the JVM we are about to launch prints to a log file, not to cell outputs."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    with open(log_path, "ab") as log:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def jar_conf(settings: Settings) -> dict[str, str]:
    """The profile's packages from Maven Central (Ivy caches them), or, with
    WORKBOOK_SPARK_JARS, the files of an offline bundle: nothing to resolve."""
    if settings.spark_jars is None:
        return {"spark.jars.packages": ",".join(PACKAGES[settings.profile])}
    listed = settings.spark_jars / f"{settings.profile}.txt"
    if not listed.is_file():
        raise FileNotFoundError(
            f"WORKBOOK_SPARK_JARS={settings.spark_jars} has no {listed.name}: point it at the "
            "jars/ folder of a bundle made by `make bundle`, or unset it to fetch from Maven."
        )
    jars = [settings.spark_jars / name for name in listed.read_text().split()]
    if missing := [j.name for j in jars if not j.is_file()]:
        raise FileNotFoundError(f"{settings.spark_jars} lacks {', '.join(missing)}")
    return {"spark.jars": ",".join(map(str, jars))}


def spark_conf(settings: Settings, app_name: str) -> dict[str, str]:
    java_opts = _java_options(settings.jvm_options)
    driver_opts = f"{java_opts} {class_archive.java_option(settings.jvm_options)}".rstrip()
    return {
        "spark.app.name": app_name,
        "spark.master": settings.spark_master,
        **jar_conf(settings),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(settings.shuffle_partitions),
        "spark.default.parallelism": str(settings.shuffle_partitions),
        "spark.driver.memory": settings.driver_memory,
        "spark.driver.extraJavaOptions": driver_opts,
        "spark.executor.extraJavaOptions": java_opts,
        "spark.ui.showConsoleProgress": "false",
        # Not spark-warehouse/ beside the notebooks, where a learner would find it.
        "spark.sql.warehouse.dir": str(settings.lakehouse / "_warehouse"),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.databricks.delta.snapshotPartitions": "2",
        # After a shuffle, as many partitions as the data fills (8 MB each), not at least one
        # per core: a daily step's shuffles of a few MB then run fewer tasks. Without it a step
        # took a tenth to a quarter longer (benchmarks/README.md).
        "spark.sql.adaptive.coalescePartitions.parallelismFirst": "false",
        "spark.sql.adaptive.advisoryPartitionSizeInBytes": "8m",
        "spark.sql.streaming.stateStore.providerClass": (
            "org.apache.spark.sql.execution.streaming.state.HDFSBackedStateStoreProvider"
        ),
        **lineage.spark_conf(settings, app_name),
    }


def _java_options(flags: str) -> str:
    """The workbook's log configuration, and ``flags``, for a JVM of Spark's."""
    return f"-Dlog4j2.configurationFile=file:{LOG4J_CONFIG} {flags}"


def s3a_conf(settings: Settings) -> dict[str, str]:
    """S3A settings for any S3 server: path-style addressing, endpoint and keys from .env."""
    access_key, secret_key = settings.s3_credentials
    endpoint = settings.s3_endpoint
    return {
        "spark.hadoop.fs.s3a.endpoint": endpoint,
        "spark.hadoop.fs.s3a.endpoint.region": "us-east-1",
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": str(endpoint.startswith("https")).lower(),
        "spark.hadoop.fs.s3a.access.key": access_key,
        "spark.hadoop.fs.s3a.secret.key": secret_key,
        "spark.hadoop.fs.s3a.aws.credentials.provider": (
            "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
        ),
    }


def stack_conf(settings: Settings) -> dict[str, str]:
    """What the stack profile adds: S3A, and a driver address the cluster can call back."""
    for service in ("spark", "s3"):
        services.require(service)
    conf = {
        **s3a_conf(settings),
        "spark.executor.memory": settings.executor_memory,
        "spark.executor.extraJavaOptions": _java_options(settings.executor_jvm_options),
    }
    if services.is_loopback("spark"):  # else the host name may resolve to a non-loopback address
        conf["spark.driver.host"] = conf["spark.driver.bindAddress"] = "127.0.0.1"
    return conf


def get_spark(app_name: str = "workbook", short_lived: bool = False, **overrides: str):
    """Get or create the session for the current profile; extra settings via ``overrides``.

    ``short_lived``: the driver runs one short job and ends (one stage of the daily step), so
    its JVM keeps to the quick compiler: the optimizing one would not pay off before the end
    (such a stage ran about a fifth faster).
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    check_java()
    # Python on the executors (the simulator's days) is the driver's, with the workbook: on
    # the stack, the workers run on the driver's machine or from the driver's image.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    settings = get_settings()
    conf = spark_conf(settings, app_name)
    if short_lived:
        conf["spark.driver.extraJavaOptions"] += " -XX:TieredStopAtLevel=1"
    conf.update(stack_conf(settings) if settings.profile == "stack" else LOCAL_DISK_CONF)
    builder = SparkSession.builder
    for key, value in {**conf, **overrides}.items():
        builder = builder.config(key, value)
    with _jvm_output_to(settings.lakehouse / "_logs" / "spark.log"):
        spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    _drop_jars_from_python_path(spark)
    return spark


def _drop_jars_from_python_path(spark) -> None:
    """Take the packages' jars off ``sys.path``, where Spark puts them for Python inside jars,
    and off the paths Spark sends the executors' Python with each task.

    The workbook's Python comes from pip, not from jars. With some 35 jars on the path, every
    ``importlib.metadata`` lookup (MLflow and tqdm make a dozen at import) reads each jar's
    index: about 0.7 s a lookup instead of a millisecond; and an executor's Python worker,
    which clears its import caches at each task, spent 0.3 s a task reading them again.
    """
    sys.path[:] = [p for p in sys.path if not p.endswith(".jar")]
    includes = spark.sparkContext._python_includes  # no public setter
    includes[:] = [p for p in includes if not p.endswith(".jar")]


# Spark generates and compiles Java for each new query plan. A daily step's queries read a
# few thousand rows each and carry the day as a literal, so no compiled plan is ever reused:
# compiling was half of the JVM's time in a step (Java Flight Recorder), more than the rows.
# Bulk jobs (02's window functions over every day) are faster compiled, so this is per use.
INTERPRETED = {
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",  # expressions too, not only whole stages
}


@contextlib.contextmanager
def interpreted(spark):
    """Evaluate queries without generating code while the block runs (for small data)."""
    before = {key: spark.conf.get(key, None) for key in INTERPRETED}
    for key, value in INTERPRETED.items():
        spark.conf.set(key, value)
    try:
        yield spark
    finally:
        for key, value in before.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def local_frame(spark, rows, schema):
    """A DataFrame of a few rows the driver holds (``schema``: a StructType), through Arrow.

    A plain list would become a Python RDD: every job over it, and every MERGE reading it,
    would then start Python workers, about 1.5 s a job on two cores instead of 0.2 s.
    """
    import pandas as pd

    return spark.createDataFrame(pd.DataFrame(list(rows), columns=schema.fieldNames()), schema)


def fetch_jars() -> None:
    """Resolve every profile's jars into the local Ivy cache, so later sessions need no network."""
    from pyspark.sql import SparkSession

    check_java()
    packages = sorted({p for ps in PACKAGES.values() for p in ps})
    spark = (
        SparkSession.builder.master("local[1]")
        .config("spark.jars.packages", ",".join(packages))
        .getOrCreate()
    )
    spark.stop()
    print(f"Fetched {len(packages)} packages and their dependencies:", *packages, sep="\n  ")


if __name__ == "__main__":
    fetch_jars()
