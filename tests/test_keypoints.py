import json

import numpy as np

from hvpose import keypoints


def test_coco17_constants_match_the_real_coco_person_category(shared_data):
    dataset = json.loads((shared_data / "coco_sample" / "test_coco.json").read_text())
    person = next(c for c in dataset["categories"] if c["name"] == "person")
    assert tuple(person["keypoints"]) == keypoints.NAMES
    assert {tuple(sorted(limb)) for limb in keypoints.SKELETON} == {
        tuple(sorted((a - 1, b - 1))) for a, b in person["skeleton"]}


def test_flip_pairs_swap_left_and_right_names():
    for left, right in keypoints.FLIP_PAIRS:
        assert keypoints.NAMES[left].startswith("left_")
        assert keypoints.NAMES[right] == keypoints.NAMES[left].replace("left_", "right_")
    unpaired = set(range(keypoints.NUM_KEYPOINTS)) - {i for pair in keypoints.FLIP_PAIRS for i in pair}
    assert unpaired == {keypoints.NAMES.index("nose")}


def test_flip_permutation_is_an_involution():
    perm = keypoints.flip_permutation()
    np.testing.assert_array_equal(perm[perm], np.arange(keypoints.NUM_KEYPOINTS))
    assert perm[keypoints.NAMES.index("left_wrist")] == keypoints.NAMES.index("right_wrist")


def test_oks_sigmas_are_pycocotools_values():
    from pycocotools.cocoeval import Params

    np.testing.assert_allclose(keypoints.OKS_SIGMAS, Params(iouType="keypoints").kpt_oks_sigmas)
