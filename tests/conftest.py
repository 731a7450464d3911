"""Shared test helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Properties, not timings: a loaded 2-core machine must not turn a slow example into a failure.
settings.register_profile("duplexer", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("duplexer")

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = REPO / "scenarios"
SHARED = REPO.parent / "shared"


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    """One local Ray instance (2 CPUs) for a whole test module: starting one takes seconds."""
    import ray

    from duplexer.runtime.ray_executor import RayOptions, ensure_ray

    ensure_ray(RayOptions(num_cpus=2))
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()
