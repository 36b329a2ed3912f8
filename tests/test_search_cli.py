"""`python -m hvpose.search` on real photos: index a folder with PoseNet (a corrupt photo skipped, an interrupted
build resumed), query it from the command line and from Python, and find each labelled COCO person's own pose."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import hvpose
from hvpose.search import PoseIndex, PoseSearch, build_index

TFJS = "posenet/tfjs_mobilenet075_stride16/model-stride16.json"


@pytest.fixture(scope="module")
def photos(shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for image in sorted((shared_data / "coco_sample" / "images").glob("*.jpg")):
        shutil.copy(image, folder / image.name)
    (folder / "nested").mkdir()
    shutil.copy(shared_data / "photos" / "astronaut.png", folder / "nested" / "astronaut.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


@pytest.fixture(scope="module")
def predictor(shared_data):
    return hvpose.Predictor.from_posenet_tfjs(str(shared_data / TFJS), batch_size=4)


@pytest.mark.slow
def test_index_resumes_and_query_finds_the_same_people(photos, predictor, tmp_path):
    out = tmp_path / "index"
    calls = []

    def predict(model, path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the build is interrupted at its third photo
        return model(path)

    with pytest.raises(KeyboardInterrupt):
        build_index(photos, predictor, out, chunk=1, progress=False, predict=predict)
    assert not (out / "index.json").exists() and len(list((out / "parts").glob("*.json"))) == 2
    with pytest.raises(hvpose.errors.DataError, match="unfinished build"):
        PoseIndex.load(out)
    calls.clear()
    report = build_index(photos, predictor, out, weights="posenet", chunk=1, progress=False,
                         predict=lambda model, path: calls.append(path) or model(path))
    assert len(calls) == 4 and report.resumed == 2  # only the photos not done before ran
    assert list(report.skipped) == ["broken.jpg"] and report.photos == 5
    index = PoseIndex.load(out)
    assert len(index) == report.poses >= 10 and index.photos[-1] == "nested/astronaut.png"
    assert index.keypoints.shape == (len(index), 17, 3) and index.embeddings.vectors.shape == (len(index), 34)

    # Every indexed person, queried with its own pose, finds itself first at distance 0.
    search = PoseSearch(index, "weighted")
    matches = search.query_many(index.keypoints, index.boxes, k=3)
    assert [m[0].row for m in matches] == list(range(len(index)))
    assert all(m[0].distance < 1e-5 and m[0].photo == index.photo_path(m[0].row) for m in matches)
    mirrored = search.query(index.keypoints[0], index.boxes[0], k=3, mirror=True)
    assert mirrored[0].row == 0 and not mirrored[0].mirrored


@pytest.mark.slow
def test_command_line_index_and_query(photos, shared_data, tmp_path):
    weights = str(shared_data / TFJS)
    out = tmp_path / "index"
    run = [sys.executable, "-m", "hvpose.search"]
    indexed = subprocess.run([*run, "index", "--images", str(photos), "--weights", weights, "--out", str(out)],
                             capture_output=True, text=True, timeout=600)
    assert indexed.returncode == 0, indexed.stderr[-2000:]
    assert "of 5 photos" in indexed.stderr and "1 unreadable photos skipped" in indexed.stderr
    picture = tmp_path / "matches.png"
    query = subprocess.run([*run, "query", "--index", str(out), "--image",
                            str(shared_data / "coco_sample" / "images" / "000000196141.jpg"), "--k", "4",
                            "--mirror", "--distance", "cosine", "--out", str(picture)],
                           capture_output=True, text=True, timeout=600)
    assert query.returncode == 0, query.stderr[-2000:]
    lines = [json.loads(line) for line in query.stdout.splitlines()]
    assert [line["rank"] for line in lines] == [1, 2, 3, 4]
    assert set(lines[0]) == {"rank", "distance", "photo", "box", "mirrored"}
    assert lines[0]["photo"].endswith("000000196141.jpg") and lines[0]["distance"] < 1e-5
    assert [line["distance"] for line in lines] == sorted(line["distance"] for line in lines)
    import cv2

    drawn = cv2.imread(str(picture))
    assert drawn.shape[0] == 256 and drawn.shape[1] > 5 * 40  # the query and four matches side by side
    bad = subprocess.run([*run, "query", "--index", str(tmp_path), "--image", str(picture)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip().startswith("hvpose: error:") and "index.json" in bad.stderr


@pytest.mark.slow
def test_posenet_people_find_their_own_labelled_pose(shared_data, predictor, tmp_path):
    """Database: the 12 labelled COCO people. Queries: PoseNet's poses of the same people on their labelled
    boxes. The weighted distance finds its own labelled pose first for 10 of them (measured: the other two are
    second), better than cosine, which ranks unlabelled keypoints' absence against a correct match."""
    sample = shared_data / "coco_sample"
    labelled = PoseIndex.from_coco(sample / "test_coco.json", images=sample / "images")
    labelled.save(tmp_path / "labelled")
    index = PoseIndex.load(tmp_path / "labelled")
    assert len(index) == 12 and np.all(np.isin(index.keypoints[..., 2], [0.0, 1.0]))
    people = [predictor(index.photo_path(row), [index.boxes[row]])[0] for row in range(len(index))]
    ranks = {}
    for distance in ("weighted", "cosine"):
        search = PoseSearch(index, distance)
        found = search.query_many(np.stack([p.keypoints for p in people]), np.stack([p.box for p in people]), k=12)
        ranks[distance] = [[m.row for m in matches].index(row) + 1 for row, matches in enumerate(found)]
    assert sum(r == 1 for r in ranks["weighted"]) >= 10 and max(ranks["weighted"]) <= 2, ranks
    assert sum(r == 1 for r in ranks["weighted"]) > sum(r == 1 for r in ranks["cosine"]), ranks
