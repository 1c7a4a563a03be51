"""The workshop suite: the platforms a room brings, the offline bundle, the learner in a browser."""

from __future__ import annotations

import pytest

from workbook import bundle


@pytest.fixture(scope="session")
def source_wheels(tmp_path_factory):
    """The wheels of the pins PyPI publishes as source only (pyspark), as the bundle has them."""
    wheels = tmp_path_factory.mktemp("wheels")
    assert bundle.build_source_only(wheels), "no wheel built"
    return wheels
