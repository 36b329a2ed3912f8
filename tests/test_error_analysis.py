"""scripts/error_analysis.py on the real keypoint evaluation with known answers (../shared/data)."""

import re
import subprocess
import sys

from conftest import REPO


def test_error_analysis_reports_the_known_ap_and_oracles_above_it(shared_data):
    folder = shared_data / "cocoeval_regression"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "error_analysis.py"),
                             str(folder / "gt_dataset.json"), str(folder / "dt_dataset.json")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("11 labelled people")  # 14 persons, 11 with keypoints
    ap = float(re.search(r"^AP (\S+)", result.stdout, re.M).group(1))
    assert ap == 0.505  # pycocotools' published answer, 0.50488...
    oracles = [float(x) for x in re.findall(r"^oracle with the \w+ keypoints exact: AP (\S+)", result.stdout, re.M)]
    assert len(oracles) == 2 and all(value >= ap for value in oracles)


def test_ground_truth_as_predictions_is_perfect(shared_data, tmp_path):
    import json

    sample = shared_data / "coco_sample" / "test_coco.json"
    truth = json.loads(sample.read_text())
    results = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
               for a in truth["annotations"] if a["num_keypoints"] > 0]
    (tmp_path / "results.json").write_text(json.dumps(results))
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "error_analysis.py"), str(sample),
                             str(tmp_path / "results.json")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "12 labelled people; mean OKS of their best prediction 1.000" in result.stdout
    assert "mirror-wise people: 0.000" in result.stdout and "AP 1.000" in result.stdout
    # Flipped left/right, every person is mirror-wise.
    from hvpose.keypoints import COCO17

    for r in results:
        r["keypoints"] = [v for k in COCO17.flip_permutation() for v in r["keypoints"][3 * k:3 * k + 3]]
    (tmp_path / "results.json").write_text(json.dumps(results))
    flipped = subprocess.run([sys.executable, str(REPO / "scripts" / "error_analysis.py"), str(sample),
                              str(tmp_path / "results.json")], capture_output=True, text=True, timeout=300)
    assert re.search(r"mirror-wise people: (0\.[89]\d\d|1\.000)", flipped.stdout), flipped.stdout
