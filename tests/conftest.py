"""Shared test settings."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _slow_only_when_asked(request):
    """Tests marked slow run only under ``-m slow`` (the marker's documented use; .ci/run runs them)."""
    if request.node.get_closest_marker("slow") and "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("slow: run with -m slow")
