"""Shared test helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = REPO / "scenarios"
SHARED = REPO.parent / "shared"


@pytest.fixture
def repo() -> Path:
    return REPO
