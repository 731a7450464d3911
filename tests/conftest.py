"""Shared test helpers."""

from __future__ import annotations

import asyncio
import functools
import os
import wave
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
T = TypeVar("T")

# Properties, not timings: a loaded 2-core machine must not turn a slow example into a failure.
settings.register_profile("duplexer", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("duplexer")

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = REPO / "scenarios"
SHARED = REPO.parent / "shared"
PHRASES = SHARED / "data" / "vap_phrases" / "audio"
VOICED_DBFS = -30.0
"""Speech for filling a span is cut to its stretches this loud, so it has no quiet in it."""


@functools.cache
def voiced(rate_hz: int = 16_000) -> np.ndarray:
    """Continuous voiced speech (float32): the loud stretches of every VAP phrase, end to end."""
    from duplexer.kernels.audio import resample
    from duplexer.kernels.loudness import audible_spans

    parts: list[np.ndarray] = []
    for path in sorted(PHRASES.glob("*.wav")):
        with wave.open(str(path), "rb") as wav:
            raw = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
            x = resample(raw.astype(np.float32) / 32768.0, wav.getframerate(), rate_hz)
        for start, end in audible_spans(x, rate_hz, VOICED_DBFS):
            parts.append(x[int(start * rate_hz / 1000) : int(end * rate_hz / 1000)])
    return np.concatenate(parts)


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Any]:
    """A real mosquitto on a free loopback port (installed on demand), stopped after the test."""
    from tests.mqtt_broker import running_broker

    yield from running_broker(tmp_path / "broker")


def run(coro: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
    """Run a test's coroutine on a fresh event loop, failing it after ``timeout_s`` rather than hanging."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout_s)

    return asyncio.run(bounded())


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


FUZZ_EXAMPLES_DEFAULT = 60
FUZZ_EXAMPLES_LONG = 2000
"""Examples per fuzzing property: bounded in the default run, many more with ``--long``."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        help="also run tests marked 'long' (the long fuzzing and soak runs); off by default",
    )


_FUZZ_EXAMPLES_ENV = "DUPLEXER_FUZZ_EXAMPLES"


def pytest_configure(config: pytest.Config) -> None:
    # An environment variable, not a global: test modules may import a second copy of conftest.
    count = FUZZ_EXAMPLES_LONG if config.getoption("--long") else FUZZ_EXAMPLES_DEFAULT
    os.environ[_FUZZ_EXAMPLES_ENV] = str(count)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="a long run: pass --long to run it")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


def fuzz_settings() -> settings:
    """Hypothesis settings for a fuzzing property: the bounded default number of examples,
    or the long count under ``--long`` (read when the test module is imported, after configure)."""
    count = int(os.environ.get(_FUZZ_EXAMPLES_ENV, FUZZ_EXAMPLES_DEFAULT))
    return settings(max_examples=count)
