"""Fixtures of the attack tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def tier_env(request):
    """The environment ``tiers.tier_run`` needs for the test's tier: the image, for the container and VM tiers."""
    tier = request.node.callspec.params.get("tier", "process") if hasattr(request.node, "callspec") else "process"
    if tier == "process":
        return {}
    return {"XDG_CACHE_HOME": str(request.getfixturevalue("image_cache"))}
