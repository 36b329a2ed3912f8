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
