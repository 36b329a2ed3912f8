"""notebooks/colab.ipynb runs top to bottom on the real sample data (PoseNet weights, a COCO photo) and on a
checkpoint trained here, so it cannot rot."""

import base64
import re

import nbformat
import pytest

from conftest import REPO
from hvpose.train import train
from test_train import tiny_config


@pytest.mark.slow
def test_notebook_runs_with_posenet_and_a_checkpoint(shared_data, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    workdir = tmp_path / "run"
    train(tiny_config(workdir_steps=2), str(workdir))
    monkeypatch.setenv("HVPOSE_SHARED_DATA", str(shared_data))
    monkeypatch.setenv("HVPOSE_CHECKPOINT", str(workdir))
    notebook = nbformat.read(REPO / "notebooks" / "colab.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert text.count("score ") >= 3 and "left_wrist" in text and "3 people; keypoints (17, 3)" in text
    pictures = [base64.b64decode(o.data["image/png"]) for o in outputs if "image/png" in o.get("data", {})]
    # Pose search: the batter, indexed from PoseNet's own box, is the nearest to the batter queried on ours.
    assert re.search(r"match 1: distance 0\.00\d\d  000000196141\.jpg", text) and "match 4:" in text, text
    assert len(pictures) == 3 and all(len(p) > 10_000 for p in pictures)
