"""Run the benchmarks; write results/latest.json and the plots beside it.

    python -m benchmarks.run                      # everything, full size (about 20 minutes)
    python -m benchmarks.run --quick              # a small smoke run, into results/quick/
    python -m benchmarks.run --only lookup,stream # some of them; the others' last figures stay
    python -m benchmarks.run --only scale         # the workbook at 0.2M, 2M and 20M rows

Order: the workbook first (its fresh lakehouse serves the lookup and stream benchmarks), then
lookups, streaming and feature engineering, which share one Spark session.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):  # run as a path: python benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

BENCHMARKS = ("workbook", "lookup", "stream", "registry", "lineage", "intake", "features", "scale")
HEADLINE_KEYS = (
    "features_rows_per_s",
    "features_ratio_vs_reference",
    "stream_latency_p50_ms",
    "stream_latency_p95_ms",
    "stream_events_per_s",
    "lookup_p99_ms",
    "lookup_http_p99_ms",
    "score_p99_ms",
    "observability_overhead_p99_share",
    "workbook_wall_s",
    "workbook_peak_rss_mb",
    "loop_step_median_s",
    "loop_step_last_vs_first",
    "tracking_overhead_share",
    "champion_load_s",
    "lineage_overhead_share",
    "lineage_event_mb",
    "intake_events_per_s",
    "intake_to_raw_events_per_s",
    "intake_to_topic_events_per_s",
    "scale_slope_largest",
    "scale_peak_rss_mb",
)
# (key, sense, limit) of the targets on the 2-core reference machine.
TARGETS = (
    ("lookup_p99_ms", "<=", 2.0),
    ("lookup_http_p99_ms", "<=", 5.0),
    ("score_p99_ms", "<=", 10.0),
    ("observability_overhead_p99_share", "<=", 0.10),
    ("stream_latency_p50_ms", "<=", 1000.0),
    ("stream_latency_p95_ms", "<=", 2000.0),
    ("features_ratio_vs_reference", "<=", 3.0),
    ("workbook_wall_s", "<=", 360.0),
    ("workbook_peak_rss_mb", "<=", 4096),
    ("loop_step_median_s", "<=", 15.0),
    ("loop_step_last_vs_first", "<=", 1.5),
    ("tracking_overhead_share", "<=", 0.10),
    ("champion_load_s", "<=", 2.0),
    ("lineage_overhead_share", "<=", 0.10),
    ("scale_slope_largest", "<=", 1.0),
    ("scale_peak_rss_mb", "<=", 6144),
)
FULL_SIZES = (1_000_000, 10_000_000)
QUICK_SIZES = (100_000,)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument(
        "--only",
        default=",".join(b for b in BENCHMARKS if b != "scale"),
        help=f"comma-separated: {','.join(BENCHMARKS)} (all but scale: 20M rows)",
    )
    parser.add_argument("--sizes", help="transactions for the features benchmark, e.g. 1000000")
    parser.add_argument(
        "--scale-sizes", help="transactions for the scale curve (default 200000,2000000,20000000)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and short series")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per engine and size")
    parser.add_argument("--trigger", default="1 second", help="the stream's processing time")
    parser.add_argument("--driver-memory", help="Spark driver memory (default by size)")
    parser.add_argument(
        "--jvm-options", help="JVM flags of the benchmark's Spark (default: the workbook's)"
    )
    parser.add_argument("--shuffle-partitions", type=int, default=8)
    parser.add_argument("--out", type=Path, help="results folder (default: benchmarks/results)")
    parser.add_argument("--plots-only", action="store_true", help="redraw plots from latest.json")
    args = parser.parse_args(argv)
    args.only = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = set(args.only) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    sizes = args.sizes or ",".join(map(str, QUICK_SIZES if args.quick else FULL_SIZES))
    args.sizes = [int(s.replace("_", "")) for s in sizes.split(",")]
    from benchmarks import scale

    default = scale.QUICK_SIZES if args.quick else scale.SIZES
    scale_sizes = args.scale_sizes or ",".join(map(str, default))
    args.scale_sizes = [int(s.replace("_", "")) for s in scale_sizes.split(",")]
    args.out = args.out or common.RESULTS_DIR / ("quick" if args.quick else "")
    return args


def headline(details: dict) -> dict:
    merged = {}
    for section in details.values():
        merged.update(section.get("headline", {}))
    return {k: merged.get(k) for k in HEADLINE_KEYS}


def targets(figures: dict) -> dict:
    out = {}
    for key, sense, limit in TARGETS:
        value = figures.get(key)
        met = None if value is None else (value <= limit if sense == "<=" else value >= limit)
        out[key] = {"target": f"{sense} {limit:g}", "value": value, "met": met}
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    latest = args.out / "latest.json"
    previous = json.loads(latest.read_text()) if latest.exists() else {}
    details = previous.get("details", {})
    if args.plots_only:
        draw_plots(details, args.out)
        return 0
    started = common.machine()
    print(
        f"Benchmarks {', '.join(args.only)} on {started['cores']} cores, "
        f"{started['memory_gib']} GiB ({started['cpu_model']}); "
        f"load average {started['load_average_1_5_15']}",
        flush=True,
    )
    common.use_benchmark_lakehouse()
    selected = [b for b in BENCHMARKS if b in args.only]
    spark = None

    def session():
        nonlocal spark
        if spark is None:
            big = "features" in selected and max(args.sizes) >= 5_000_000
            memory = args.driver_memory or ("6g" if big else "2g")
            spark = common.spark_session(memory, args.jvm_options, args.shuffle_partitions)
        return spark

    for name in selected:
        print(f"\n== {name}", flush=True)
        with common.timed() as took:
            if name == "workbook":
                from benchmarks import workbook

                section = workbook.run(quick=args.quick)
            elif name == "lookup":
                from benchmarks import lookup, workbook

                workbook.ensure_lakehouse()
                small = dict(n=500, batches=100, http_batches=100, warmup=100)
                section = lookup.run(**(small if args.quick else {}))
            elif name == "stream":
                from benchmarks import stream, workbook

                workbook.ensure_lakehouse()
                small = dict(seconds=15, warmup_seconds=5, backlog=50_000, backlog_appends=5)
                small.update(rate=500, pool_size=20_000, floor_seconds=5)
                section = stream.run(session(), args.trigger, **(small if args.quick else {}))
            elif name == "registry":
                from benchmarks import registry, workbook

                workbook.ensure_lakehouse()
                section = registry.run(**({"rounds": 1, "loads": 2} if args.quick else {}))
            elif name == "lineage":
                from benchmarks import lineage

                section = lineage.run(**({"rounds": 1, "quick": True} if args.quick else {}))
            elif name == "scale":
                from benchmarks import scale

                section = scale.run(args.scale_sizes)
            elif name == "intake":
                from benchmarks import intake

                section = intake.run(session(), **({"n": 5_000} if args.quick else {}))
            elif name == "features":
                from benchmarks import features

                section = features.run(session(), args.sizes, args.repeats)
        section["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        section["quick"] = args.quick
        section["benchmark_seconds"] = round(took(), 1)
        details[name] = section
        write(args, details, started)  # after each benchmark: a crash keeps the rest

    if spark is not None:
        spark.stop()
    if {"workbook", "lookup"} & set(selected):
        from benchmarks import workbook

        workbook.stop_postgres(common.LAKEHOUSE_DIR)
    figures = headline(details)
    print("\n== results in", latest)
    for key, check in targets(figures).items():
        state = {True: "met", False: "NOT met", None: "not measured"}[check["met"]]
        print(f"  {key:<30} {check['value']!s:>12}  target {check['target']:<8} {state}")
    return 0


def write(args, details: dict, started: dict) -> None:
    figures = headline(details)
    result = {
        **figures,
        "targets": targets(figures),
        "machine": {**started, "load_average_at_end": common.machine()["load_average_1_5_15"]},
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:]),
        "details": details,
    }
    (args.out / "latest.json").write_text(json.dumps(result, indent=2, default=str))
    draw_plots(details, args.out)


def draw_plots(details: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from benchmarks import features, intake, lineage, lookup, registry, scale, stream, workbook

    modules = {
        "features": features,
        "intake": intake,
        "stream": stream,
        "lookup": lookup,
        "registry": registry,
        "lineage": lineage,
        "workbook": workbook,
        "scale": scale,
    }
    for name, section in details.items():
        modules[name].plot(section, out / f"{name}.png")


if __name__ == "__main__":
    sys.exit(main())
