"""The offline bundle: everything a workshop room installs, for the platforms it brings.

``make bundle PLATFORMS="linux-x86_64 macos-arm64"`` writes ``bundle/`` and a tarball of it:

- ``wheels/``: every pinned package (and what it needs) as wheels for each platform, plus
  pyspark, which PyPI publishes as source only, built once into a wheel (pure Python);
- ``jars/``: the Spark packages a profile needs (the local one's by default), resolved once,
  with a list per profile;
- ``source.tar``: the workbook itself; ``README.md``: the steps.

Installing from it needs no index (``pip install --no-index``); with ``WORKBOOK_SPARK_JARS``
pointing at ``jars/``, Spark loads those files and resolves nothing.

The same platforms prove that the pins install everywhere: ``resolve`` asks uv which wheels
a platform would take (its markers evaluated for that platform), installing nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from workbook.config import REPO_ROOT
from workbook.spark import PACKAGES

PYTHON = ("3.11", "cp311")
MACOS_MIN = "12.0"  # the oldest macOS with wheels of every pin (pyarrow's)
# The platforms a room brings: uv's name for each (it resolves the pins for that platform,
# markers included), and the wheel tags pip then downloads, none newer than uv assumed.
_MANYLINUX = [f"manylinux_2_{v}" for v in (5, 12, 17, 24, 26, 27, 28)]
_MANYLINUX += ["manylinux1", "manylinux2010", "manylinux2014"]
_MACOS_INTEL = [f"macosx_10_{v}" for v in range(9, 16)] + ["macosx_11_0", "macosx_12_0"]
PLATFORMS = {
    "linux-x86_64": ("x86_64-manylinux_2_28", [f"{t}_x86_64" for t in _MANYLINUX]),
    "linux-aarch64": ("aarch64-manylinux_2_28", [f"{t}_aarch64" for t in _MANYLINUX]),
    "macos-arm64": (
        "aarch64-apple-darwin",
        [f"macosx_{v}_0_{a}" for v in (11, 12) for a in ("arm64", "universal2")],
    ),
    "macos-x86_64": (
        "x86_64-apple-darwin",
        [f"{t}_{a}" for t in _MACOS_INTEL for a in ("x86_64", "intel", "universal2")],
    ),
}
SOURCE_ONLY = ("pyspark",)  # pins PyPI has no wheel of: built here, once, for every platform
DEFAULT_DIR = REPO_ROOT / "bundle"


def this_platform() -> str:
    system = {"Linux": "linux", "Darwin": "macos"}.get(platform.system(), platform.system())
    machine = {"amd64": "x86_64", "arm64": "arm64" if system == "macos" else "aarch64"}
    return f"{system}-{machine.get(platform.machine().lower(), platform.machine().lower())}"


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def build_requirements() -> list[str]:
    """What installs the workbook itself (pyproject's build backend)."""
    return _pyproject()["build-system"]["requires"]


def pins(extras: tuple[str, ...] = ("dev",)) -> list[str]:
    """The pinned requirements (with their platform markers) from pyproject.toml."""
    project = _pyproject()["project"]
    optional = project["optional-dependencies"]
    return [*project["dependencies"], *(p for extra in extras for p in optional[extra])]


def _run(command: list[str], what: str, **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **env}, timeout=1800
    )
    if done.returncode:
        raise RuntimeError(f"{what} failed:\n{done.stderr.strip()[-3000:]}")
    return done


def _pip(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"]
    return _run(command, f"pip {args[0]}")


def build_source_only(wheels: Path) -> list[Path]:
    """Wheels of the pins published as source only (pip's cache makes this quick)."""
    wanted = [p for p in pins() if p.split("==")[0] in SOURCE_ONLY]
    _pip("wheel", "--no-deps", "--wheel-dir", str(wheels), *wanted)
    return sorted(p for p in wheels.glob("*.whl") if p.name.split("-")[0] in SOURCE_ONLY)


def resolve(name: str, wheels: Path) -> dict[str, str]:
    """What platform ``name`` installs: {package: version}, wheels only, markers evaluated for
    that platform. ``wheels`` holds the source-only pins' wheels. Raises with uv's reason
    (which pin has no wheel for which tags) when the pins do not install there."""
    from uv import find_uv_bin

    if name not in PLATFORMS:
        raise ValueError(f"platform {name!r}; expected one of {', '.join(PLATFORMS)}")
    with tempfile.TemporaryDirectory() as work:
        requirements = Path(work) / "requirements.in"
        requirements.write_text("\n".join([*pins(), *build_requirements()]) + "\n")
        command = [find_uv_bin(), "pip", "compile", str(requirements), "--quiet"]
        command += ["--no-header", "--no-annotate", "--python-version", PYTHON[0]]
        command += ["--python-platform", PLATFORMS[name][0], "--only-binary", ":all:"]
        command += ["--find-links", str(wheels)]
        done = _run(command, f"resolving for {name}", MACOSX_DEPLOYMENT_TARGET=MACOS_MIN)
    pinned = (line.split("==") for line in done.stdout.splitlines() if "==" in line)
    return {package.strip().lower(): version.strip() for package, version in pinned}


def download(name: str, wheels: Path) -> int:
    """Every wheel platform ``name`` needs into ``wheels``; how many it needs."""
    resolved = resolve(name, wheels)
    version, abi = PYTHON
    tags = [x for tag in PLATFORMS[name][1] for x in ("--platform", tag)]
    with tempfile.TemporaryDirectory() as work:
        requirements = Path(work) / "requirements.txt"
        requirements.write_text("".join(f"{p}=={v}\n" for p, v in resolved.items()))
        _pip("download", "--no-deps", "--only-binary=:all:", "--dest", str(wheels),
             "--find-links", str(wheels), "--python-version", version, "--implementation",
             "cp", "--abi", abi, "--abi", "abi3", "--abi", "none", *tags,
             "-r", str(requirements))  # fmt: skip
    return len(resolved)


# Spark resolves --packages when its JVM starts: one fresh process per profile.
_RESOLVE = """
import sys
from pathlib import Path
from pyspark.sql import SparkSession
from workbook.spark import _jvm_output_to
with _jvm_output_to(Path(sys.argv[2])):  # Ivy's report, not the console's
    builder = SparkSession.builder.master("local[1]")
    spark = builder.config("spark.jars.packages", sys.argv[1]).getOrCreate()
print(spark.conf.get("spark.jars"))
"""


def collect_jars(jars: Path, profiles: tuple[str, ...]) -> dict[str, list[str]]:
    """Resolve each profile's Spark packages once, copy the jars, list them per profile."""
    from workbook.spark import check_java

    check_java()
    jars.mkdir(parents=True, exist_ok=True)
    lists = {}
    for profile in profiles:
        packages = PACKAGES[profile]
        command = [sys.executable, "-c", _RESOLVE, ",".join(packages), str(jars / "resolved.log")]
        urls = _run(command, f"resolving the {profile} profile's jars").stdout.split()[-1]
        resolved = [Path(url2pathname(urlparse(u).path)) for u in urls.split(",")]
        for jar in resolved:
            shutil.copy2(jar, jars / jar.name)
        lists[profile] = sorted(jar.name for jar in resolved)
        (jars / f"{profile}.txt").write_text("\n".join(lists[profile]) + "\n")
    return lists


STEPS = """# The workbook, offline

Made {made} for {platforms}. Install Python 3.11 and Java 17 beforehand; then, with this
folder at /path/to/bundle:

    mkdir workbook && tar -xf /path/to/bundle/source.tar -C workbook && cd workbook
    make setup-offline BUNDLE=/path/to/bundle   # wheels from here; .env names jars/
    make run                                    # or: make lab

Nothing is downloaded: pip installs with --no-index, and Spark loads the jars in jars/.
"""


def build(
    target: Path, platforms: list[str], profiles: tuple[str, ...] = ("local",), tarball=True
) -> dict:
    """Write the bundle into ``target`` (and ``target``.tar); what it holds and its size."""
    started = time.perf_counter()
    wheels = target / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    print(f"[1/4] wheels of {', '.join(SOURCE_ONLY)} (source only on PyPI)", flush=True)
    build_source_only(wheels)
    for i, name in enumerate(platforms, 1):
        print(f"[2/4] wheels for {name} ({i}/{len(platforms)})", flush=True)
        download(name, wheels)
    print("[3/4] Spark's jars for each profile", flush=True)
    jars = collect_jars(target / "jars", profiles)
    print("[4/4] the workbook's source and the steps", flush=True)
    source = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", "-o", str(target / "source.tar"),
         "HEAD"], capture_output=True, text=True)  # fmt: skip
    if source.returncode:
        raise RuntimeError(f"git archive failed (a git checkout is needed): {source.stderr}")
    steps = STEPS.format(made=time.strftime("%Y-%m-%d"), platforms=", ".join(platforms))
    (target / "README.md").write_text(steps)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    if tarball:
        with tarfile.open(target.with_suffix(".tar"), "w") as tar:  # wheels and jars are zips
            tar.add(target, arcname=target.name)
    return {
        "platforms": platforms,
        "wheels": len(list(wheels.glob("*.whl"))),
        "jars": {profile: len(names) for profile, names in jars.items()},
        "size_mb": round(size / 2**20),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write the offline bundle for a workshop.")
    parser.add_argument("--to", type=Path, default=DEFAULT_DIR, help="the bundle's folder")
    parser.add_argument(
        "--platforms", nargs="+", default=[this_platform()], choices=sorted(PLATFORMS)
    )
    parser.add_argument(
        "--profiles",
        nargs="+",
        default=["local"],
        choices=sorted(PACKAGES),
        help="whose Spark jars (the stack's carry the AWS SDK: 600 MB)",
    )
    parser.add_argument("--no-tarball", action="store_true", help="the folder only")
    args = parser.parse_args(argv)
    done = build(args.to.resolve(), args.platforms, tuple(args.profiles), not args.no_tarball)
    print(json.dumps(done, indent=2))
    print(f"Bundle in {args.to}" + ("" if args.no_tarball else f" and {args.to}.tar"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
