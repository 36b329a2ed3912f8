"""The voting benchmark runs end to end on small inputs and what it records is right: every exact
implementation matches the float64 reference, and the sparse variant's error is measured on real predictions."""

import json
import os
import pathlib
import subprocess
import sys

from conftest import REPO


def test_voting_benchmark_records_exact_implementations_and_sparse_error(tmp_path, shared_data):
    out = tmp_path / "voting.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "voting.py"), "--batch", "2", "--height", "33", "--width", "25",
         "--repeats", "1", "--network_depth", "0", "--sparse_sizes", "64,4096", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HVPOSE_SHARED_DATA": str(shared_data)})
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(pathlib.Path(out).read_text())
    kernels = [row for row in record["results"] if row["section"] == "kernel"]
    names = {row["implementation"] for row in kernels}
    assert {"numpy-one-pass", "scatter", "segment_sum", "native", "native-1-thread", "sparse-64"} <= names
    assert "sparse-4096" not in names  # more pixels than a 33x25 map has: skipped, not an error
    for row in kernels:
        if row["exact"]:
            assert row["max_error_relative_to_peak"] < 1e-4, row
            assert 0 < row["of_bandwidth_floor"] < 1, row
    sparse = [row for row in record["results"] if row["section"] == "sparse_error"]
    assert [row["top_n"] for row in sparse] == [64, 4096]
    assert sparse[0]["people"] == 12 and sparse[0]["keypoints"] == 204
    assert sparse[0]["moved_fraction"] >= sparse[1]["moved_fraction"]
    assert record["machine"]["cpu"] and record["code"]["commit"]


def test_train_step_benchmark_times_the_configured_backbone(monkeypatch):
    """The bare-backbone step of benchmarks/train_step.py builds the config's ResNet (the demo's conv5_x at half
    width included): it takes the keypoint network's backbone parameters as they are."""
    from test_train import tiny_config

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import train_step

    config = tiny_config()
    assert tuple(config.model.width_multipliers) == (1, 2, 4, 4)
    seconds, _ = train_step.backbone_step(train_step.make_setup(config, 2), repeats=1)
    assert seconds > 0
