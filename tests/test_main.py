"""The command line: bad config keys and bad data end in one clear line; eval without a checkpoint too."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


def run_main(*args, timeout=300, cwd=REPO, env=None):
    return subprocess.run([sys.executable, "-m", "hvpose.main", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_unknown_config_key_is_rejected_in_one_line(tmp_path):
    result = run_main("--config=configs/demo.py", f"--workdir={tmp_path}", "--config.train.stepz=5")
    assert result.returncode != 0
    error_lines = [line for line in result.stderr.splitlines() if "stepz" in line]
    assert error_lines and "Traceback" not in result.stderr, result.stderr[-2000:]


def test_an_unknown_malloc_choice_is_one_line_before_anything_runs(tmp_path):
    # hvpose.main applies hvpose.allocator first thing (before JAX), so a bad HVPOSE_MALLOC stops it at once.
    result = run_main("--config=configs/demo.py", f"--workdir={tmp_path}",
                      env={**os.environ, "HVPOSE_MALLOC": "jemalloc"})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == ("hvpose: error: HVPOSE_MALLOC='jemalloc': expected one of "
                                                       "auto, reuse, system")
    assert not any(tmp_path.iterdir())


def test_unknown_variant_is_rejected(tmp_path):
    result = run_main("--config=configs/coco.py:nonsense", f"--workdir={tmp_path}")
    assert result.returncode != 0 and "unknown variant 'nonsense'" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-2000:]


def test_missing_annotations_are_one_clear_line(tmp_path):
    result = run_main("--config=configs/coco.py", f"--workdir={tmp_path}", "--mode=train",
                      f"--config.data.train.annotations={tmp_path}/absent.json",
                      f"--config.data.train.images={tmp_path}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"hvpose: error: {tmp_path}/absent.json: no such file"
    assert "Traceback" not in result.stderr


def test_eval_without_checkpoint_is_one_clear_line(tmp_path, shared_data):
    sample = shared_data / "coco_sample"
    result = run_main("--config=configs/coco.py", f"--workdir={tmp_path}", "--mode=eval",
                      f"--config.data.val.annotations={sample / 'test_coco.json'}",
                      f"--config.data.val.images={sample / 'images'}")
    assert result.returncode == 1 and "no checkpoint to evaluate" in result.stderr.strip().splitlines()[-1]


TINY = ["--config.model.base_width=8", "--config.model.output_stride=8", "--config.crop.height=33",
        "--config.crop.width=25", "--config.loss.radius=4.0", "--config.loss.offset_scale=4.0",
        "--config.data.synthetic.num_train=6",
        "--config.data.synthetic.num_val=3", "--config.data.worker_count=0", "--config.train.batch_size=4",
        "--config.train.steps=2", "--config.train.log_every=1", "--config.eval.batch_size=4"]


@pytest.mark.slow
def test_train_then_eval_from_the_command_line(tmp_path):
    """The contract: train writes checkpoints and metrics; --mode=eval evaluates the newest checkpoint.

    Run from another folder with a relative --workdir, as `make demo` does."""
    config = f"--config={REPO / 'configs' / 'demo.py'}"
    trained = run_main(config, "--workdir=run", "--mode=train", *TINY, timeout=600, cwd=tmp_path)
    tmp_path = tmp_path / "run"
    assert trained.returncode == 0, trained.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert {"step", "loss", "heatmap_loss", "offset_loss", "learning_rate", "crops_per_second"} <= set(records[0])
    assert (tmp_path / "checkpoints" / "2").is_dir() and (tmp_path / "checkpoints" / "config.json").is_file()
    assert list((tmp_path / "tensorboard").iterdir())
    evaluated = run_main(config, "--workdir=run", "--mode=eval", *TINY, timeout=600, cwd=tmp_path.parent)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["step"] == 2 and set(metrics) == {"AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75",
                                                     "ARm", "ARl", "step"}
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results and len(results[0]["keypoints"]) == 51
    # The plain COCO keypoint-results format (pycocotools' loadRes adds area, id and bbox to what it is given).
    assert all(set(r) == {"image_id", "category_id", "keypoints", "score"} for r in results)
    assert all(0 <= r["score"] <= 1 for r in results)
    assert (tmp_path / "eval" / "predictions.png").stat().st_size > 1000
    # A quick check on the first boxes only: COCOeval is restricted to their images.
    first = run_main(config, "--workdir=run", "--mode=eval", *TINY, "--config.eval.max_boxes=2", timeout=600,
                     cwd=tmp_path.parent)
    assert first.returncode == 0 and "on 2 boxes" in first.stderr, first.stderr[-3000:]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert 1 <= len({r["image_id"] for r in results}) <= 2 and len(results) <= 2


@pytest.mark.slow
def test_demo_config_given_a_users_files_trains_and_evaluates_on_exactly_those(tmp_path, shared_data):
    """`configs/demo.py` with a user's own COCO files: training and evaluation read those files (the results name
    their image ids), and the built-in synthetic people are never generated."""
    sample = shared_data / "coco_sample"
    paths = [f"--config.data.{split}.{kind}={sample / name}" for split in ("train", "val")
             for kind, name in (("annotations", "test_coco.json"), ("images", "images"))]
    tiny = [flag for flag in TINY if "synthetic" not in flag]
    result = run_main("--config=configs/demo.py", f"--workdir={tmp_path}", *paths, *tiny, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert {r["image_id"] for r in results} <= {785, 40083, 196141, 197388} and len(results) >= 4
    assert not (tmp_path / "demo_data").exists()
    one_split = run_main("--config=configs/demo.py", f"--workdir={tmp_path / 'half'}", *paths[:2], *tiny)
    assert one_split.returncode == 1 and "Traceback" not in one_split.stderr
    assert one_split.stderr.strip().splitlines()[-1].startswith(
        "hvpose: error: config.data.val.annotations and config.data.val.images must name")


@pytest.mark.slow
def test_training_with_data_workers_ends_without_leaked_shared_memory(tmp_path):
    """grain's worker processes hand batches over in shared memory; a run must release all of it (Python's
    resource tracker otherwise warns about leaked shared_memory objects at exit)."""
    flags = [f if "worker_count" not in f else "--config.data.worker_count=1" for f in TINY]
    # A second, fresh run is allowed one leak of the first: grain's worker can be killed by close() while it copies
    # a prefetched batch into a new shared-memory block, which nobody then unlinks. That race (about 1 run in 4
    # under load here, at commit 46b9cca too) is grain's; a run that never releases its batches leaks every time.
    for attempt in (1, 2):
        result = run_main("--config=configs/demo.py", f"--workdir={tmp_path / str(attempt)}", *flags,
                          "--config.train.steps=6")
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
        if "leaked shared_memory" not in result.stderr:
            break
    assert "leaked shared_memory" not in result.stderr, result.stderr[-3000:]
