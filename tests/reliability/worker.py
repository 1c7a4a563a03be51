"""A child process for the fault tests: one ingestion or scoring run, until its source is drained.

The tests start it, kill it (its Python process, or its JVM too) in the middle of a run and
start it again; the tables must come out as if nothing had happened. Usage:

    python tests/reliability/worker.py '<json task>'

Task keys: ``job`` ("ingest" or "score"); for ingest ``raw``, ``quarantine``,
``checkpoint`` and either ``landing`` (a folder of JSON-lines files) or ``topic`` (Kafka);
for score ``model``, ``raw``, ``features``, ``predictions``; for loop ``label_delay`` (one
daily step of notebook 06 on the lakehouse of ``WORKBOOK_LAKEHOUSE``); for write ``path``, ``rows``
(a new table of that many ids); for dump ``tables`` (name: location), ``columns``
(optional) and ``out``, a local JSON file that gets each table's rows (null if absent).
"""

from __future__ import annotations

import json
import sys
from functools import partial

# Small micro-batches, so that a run has several and a kill falls between or inside them.
FILES_PER_BATCH = 1
KAFKA_EVENTS_PER_BATCH = 400
# For the write under an S3 outage: give up within seconds instead of retrying for minutes.
S3_FAIL_FAST = {
    "spark.hadoop.fs.s3a.retry.limit": "2",
    "spark.hadoop.fs.s3a.attempts.maximum": "2",
    "spark.hadoop.fs.s3a.connection.establish.timeout": "2000",
}


def kafka_events(spark, topic: str):
    """The library's Kafka source (``sources.kafka_stream``) on a topic of the test's own."""
    from pyspark.sql import functions as F

    from workbook.config import get_settings

    return (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", get_settings().kafka_bootstrap_servers)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", KAFKA_EVENTS_PER_BATCH)
        .load()
        .select(F.col("value").cast("string").alias("value"))
    )


def run(task: dict) -> None:
    from workbook import inference, ingest, sources
    from workbook.spark import get_spark

    # Driver-only Spark even on the stack: the faults under test are in the sources, sinks
    # and the process itself, and a second application would queue on the shared cluster.
    spark = get_spark(
        "reliability-worker",
        **{
            "spark.master": "local[2]",
            "spark.sql.shuffle.partitions": "2",
            "spark.default.parallelism": "2",
            **(S3_FAIL_FAST if task["job"] == "write" else {}),
        },
    )
    if task["job"] == "ingest":
        if task.get("topic"):
            events = partial(kafka_events, spark, task["topic"])
        else:
            events = partial(sources.landed_files_stream, spark, task["landing"], FILES_PER_BATCH)
        # As ingest.ingest_events runs it, on a source of the test's own.
        query = ingest.run_to_end(
            lambda: ingest.start_ingest(
                spark, events(), task["raw"], task["quarantine"], task["checkpoint"]
            )
        )
    elif task["job"] == "score":
        from pyspark.ml import PipelineModel

        query = inference.start_scoring(
            spark,
            PipelineModel.load(task["model"]),
            "test",
            task["raw"],
            task["features"],
            task["predictions"],
            starting_version=0,
        )
    elif task["job"] == "loop":
        from workbook import loop

        settings = loop.LoopSettings(label_delay_days=task["label_delay"])
        print(loop.run_day(spark, loop.next_day(spark), settings).to_json(), flush=True)
        return
    elif task["job"] == "write":
        from pyspark.sql import functions as F

        ids = spark.range(task["rows"], numPartitions=16)
        ids.withColumn("payload", F.sha2(F.col("id").cast("string"), 256)).write.format(
            "delta"
        ).save(task["path"])
        print("written", flush=True)
        return
    elif task["job"] == "dump":
        from workbook import lakehouse

        tables = {
            name: [
                row.asDict()
                for row in spark.read.format("delta")
                .load(path)
                .select(*(task.get("columns") or "*"))
                .collect()
            ]
            if lakehouse.is_delta_table(spark, path)
            else None
            for name, path in task["tables"].items()
        }
        with open(task["out"], "w") as out:
            json.dump(tables, out, default=str)
        return
    else:
        raise SystemExit(f"unknown job {task['job']!r}")
    query.awaitTermination()
    if query.exception() is not None:
        raise SystemExit(f"query failed: {query.exception()}")
    print("drained", flush=True)


if __name__ == "__main__":
    run(json.loads(sys.argv[1]))
