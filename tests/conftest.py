"""Shared fixtures: the real data beside the checkout (../shared/data) and a seeded numpy generator."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """`../shared/data` (or $HVPOSE_SHARED_DATA): real COCO samples and weights, present in CI."""
    path = pathlib.Path(os.environ.get("HVPOSE_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"real test data not found at {path} (set HVPOSE_SHARED_DATA)")
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
