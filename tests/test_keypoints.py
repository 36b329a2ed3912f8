import json

import numpy as np

from hvpose import keypoints
from hvpose.keypoints import COCO17


def test_coco17_constants_match_the_real_coco_person_category(shared_data):
    dataset = json.loads((shared_data / "coco_sample" / "test_coco.json").read_text())
    person = next(c for c in dataset["categories"] if c["name"] == "person")
    assert tuple(person["keypoints"]) == COCO17.names
    assert {tuple(sorted(limb)) for limb in COCO17.skeleton} == {
        tuple(sorted((a - 1, b - 1))) for a, b in person["skeleton"]}


def test_flip_pairs_swap_left_and_right_names():
    for left, right in COCO17.flip_pairs:
        assert COCO17.names[left].startswith("left_")
        assert COCO17.names[right] == COCO17.names[left].replace("left_", "right_")
    unpaired = set(range(COCO17.num_keypoints)) - {i for pair in COCO17.flip_pairs for i in pair}
    assert unpaired == {COCO17.names.index("nose")}


def test_flip_permutation_is_an_involution():
    perm = COCO17.flip_permutation()
    np.testing.assert_array_equal(perm[perm], np.arange(COCO17.num_keypoints))
    assert perm[COCO17.names.index("left_wrist")] == COCO17.names.index("right_wrist")


def test_oks_sigmas_are_pycocotools_values():
    from pycocotools.cocoeval import Params

    np.testing.assert_allclose(COCO17.sigmas, Params(iouType="keypoints").kpt_oks_sigmas)


def test_coco_category_gives_the_coco17_set(shared_data):
    dataset = json.loads((shared_data / "coco_sample" / "test_coco.json").read_text())
    person = next(c for c in dataset["categories"] if c["name"] == "person")
    derived = keypoints.KeypointSet.from_category(person)
    assert derived.names == keypoints.COCO17.names
    assert set(derived.flip_pairs) == set(COCO17.flip_pairs)  # inferred from left_/right_ names
    assert derived.sigmas == keypoints.COCO17.sigmas
    assert set(map(frozenset, derived.skeleton)) == set(map(frozenset, COCO17.skeleton))


def test_other_keypoint_sets_infer_flip_pairs_and_take_config_values():
    hand = {"keypoints": ["wrist"] + [f"finger{i}_{j}" for i in range(5) for j in range(4)],
            "skeleton": [[1, 2], [2, 3]]}
    hand_set = keypoints.KeypointSet.from_category(hand)
    assert hand_set.num_keypoints == 21 and hand_set.flip_pairs == ()
    assert hand_set.sigmas == (keypoints.DEFAULT_SIGMA,) * 21
    body = {"keypoints": ["head", "l_hand", "r_hand", "Left-Foot", "Right-Foot"], "skeleton": []}
    body_set = keypoints.KeypointSet.from_category(body, sigmas=[0.1] * 5)
    assert set(body_set.flip_pairs) == {(1, 2), (3, 4)}
    assert body_set.sigmas == (0.1,) * 5 and body_set.names == tuple(body["keypoints"])
    np.testing.assert_array_equal(body_set.flip_permutation(), [0, 2, 1, 4, 3])
    # Flipping with the inferred pairs (image 100 px wide): index 1 (l_hand) takes the mirror of r_hand (60 -> 39).
    points = np.array([[50.0, 10], [40, 30], [60, 30], [45, 90], [55, 90]])
    mirrored = np.stack([99 - points[:, 0], points[:, 1]], 1)[body_set.flip_permutation()]
    np.testing.assert_array_equal(mirrored, [[49, 10], [39, 30], [59, 30], [44, 90], [54, 90]])
    assert keypoints.KeypointSet.from_category(body, flip_pairs=[]).flip_pairs == ()
    assert keypoints.KeypointSet.from_category(body, flip_pairs=[[3, 4]]).flip_pairs == ((3, 4),)


def test_inconsistent_keypoint_sets_are_refused():
    import pytest

    with pytest.raises(ValueError, match="sigmas"):
        keypoints.KeypointSet(("a", "b"), (), (), (0.1,))
    with pytest.raises(ValueError, match="out of range"):
        keypoints.KeypointSet(("a", "b"), ((0, 2),), (), (0.1, 0.1))
    with pytest.raises(ValueError, match="two flip pairs"):
        keypoints.KeypointSet(("a", "b", "c"), (), ((0, 1), (1, 2)), (0.1,) * 3)
