"""Every pin installs on linux x86_64 and aarch64 and on macOS arm64 and x86_64.

No Docker engine runs here, so the Compose image's build for linux/arm64 is proven the way
pip would fail it: the image installs the workbook's pins (``pip install -e ".[dev]"``), and
resolving them for aarch64, wheels only, must succeed. linux aarch64 has no pgserver wheel:
its marker leaves it out there, and the machine's PostgreSQL serves the store
(test_machine_postgres.py).
"""

from __future__ import annotations

import pytest
from packaging.requirements import Requirement

from workbook import bundle

# What uv's platform names stand for, as packaging's marker environment.
MARKERS = {
    "linux-x86_64": {"sys_platform": "linux", "platform_machine": "x86_64"},
    "linux-aarch64": {"sys_platform": "linux", "platform_machine": "aarch64"},
    "macos-arm64": {"sys_platform": "darwin", "platform_machine": "arm64"},
    "macos-x86_64": {"sys_platform": "darwin", "platform_machine": "x86_64"},
}


@pytest.mark.parametrize("platform", sorted(bundle.PLATFORMS))
def test_every_pin_has_a_wheel_for_the_platform(platform, source_wheels):
    resolved = bundle.resolve(platform, source_wheels)
    for pin in map(Requirement, bundle.pins()):
        applies = pin.marker is None or pin.marker.evaluate(MARKERS[platform])
        if applies:
            assert resolved.get(pin.name.lower()) == str(pin.specifier).removeprefix("==")
        else:
            assert pin.name.lower() not in resolved, f"{pin.name} is not for {platform}"


def test_a_pin_without_a_wheel_is_named(source_wheels, monkeypatch):
    unmarked = [p.split(";")[0] for p in bundle.pins()]
    monkeypatch.setattr(bundle, "pins", lambda: unmarked)
    with pytest.raises(RuntimeError, match=r"pgserver==0\.1\.4 has no wheels"):
        bundle.resolve("linux-aarch64", source_wheels)
