"""Shared fixtures: the real data beside the checkout (../shared/data) and a seeded numpy generator.

Outside CI, a test whose real data or optional runtime is missing skips; in CI (`CI=true`, as `.ci/run` runs)
the same absence fails the run, so a CI machine without them cannot pass by skipping.

The session shares one JAX persistent compilation cache, fresh per run, with every process it starts (the CLI,
README, notebook and multi-process tests compile the same steps again): set before anything imports JAX.
"""

from __future__ import annotations

import atexit
import importlib
import os
import pathlib
import shutil
import tempfile
from types import ModuleType

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="hvpose-test-jax-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """Skips the test, or fails it when running in CI."""
    if IN_CI:
        pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
    pytest.skip(reason)


def import_or_skip(name: str) -> ModuleType:
    """The module, or a skip (a failure in CI) naming what is missing."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        skip_or_fail(f"optional runtime {name} is not installed ({error})")
        raise  # unreachable: skip_or_fail raises


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """`../shared/data` (or $HVPOSE_SHARED_DATA): real COCO samples and weights, present in CI."""
    path = pathlib.Path(os.environ.get("HVPOSE_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        skip_or_fail(f"real test data not found at {path} (set HVPOSE_SHARED_DATA)")
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def loader_read_options(monkeypatch) -> list[tuple[int, int]]:
    """(num_threads, prefetch_buffer_size) of every `grain.DataLoader` built while the test runs, in order: what
    the configured read options reached."""
    import grain

    given: list[tuple[int, int]] = []

    class RecordingLoader(grain.DataLoader):
        def __init__(self, *args, read_options=None, **kwargs):
            options = read_options or grain.ReadOptions()
            given.append((options.num_threads, options.prefetch_buffer_size))
            super().__init__(*args, read_options=read_options, **kwargs)

    monkeypatch.setattr(grain, "DataLoader", RecordingLoader)
    return given
