"""The command line: bad config keys and bad data end in one clear line; eval without a checkpoint too."""

import subprocess
import sys

from conftest import REPO


def run_main(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "hvpose.main", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_unknown_config_key_is_rejected_in_one_line(tmp_path):
    result = run_main("--config=configs/demo.py", f"--workdir={tmp_path}", "--config.train.stepz=5")
    assert result.returncode != 0
    error_lines = [line for line in result.stderr.splitlines() if "stepz" in line]
    assert error_lines and "Traceback" not in result.stderr, result.stderr[-2000:]


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
