"""Drawing people: a person's left limbs are drawn warm (orange), right limbs cool (blue), limbs across the body
neutral (green), checked on the pixels along each limb of one person drawn on a blank image."""

import numpy as np

from hvpose.keypoints import COCO17, KeypointSet
from hvpose.visualize import draw_people, grid

NAMES = COCO17.names


def person(points):
    """(17, 3) keypoints: the named ones at their (x, y) with score 1, the others unshown (score 0)."""
    keypoints = np.zeros((17, 3))
    for name, (x, y) in points.items():
        keypoints[NAMES.index(name)] = (x, y, 1.0)
    return keypoints


def along(image, start, end, margin=12):
    """(N, 3) RGB pixels on the segment start -> end, leaving out `margin` pixels at each end (the keypoint dots)."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    length = np.linalg.norm(end - start)
    t = np.linspace(margin / length, 1 - margin / length, 40)
    xs, ys = np.round(start[:, None] + (end - start)[:, None] * t).astype(int)
    return image[ys, xs].astype(int)


def assert_hue(pixels, warm):
    """Every pixel is strongly warm (red well above blue, orange: green in between) or strongly cool."""
    red, green, blue = pixels.T
    if warm:
        assert (red > 200).all() and (blue < 60).all() and ((green > 80) & (green < 200)).all(), pixels
    else:
        assert (blue > 200).all() and (red < 60).all() and ((green > 80) & (green < 200)).all(), pixels


def test_left_limbs_are_warm_and_right_limbs_cool():
    """A person facing the camera: their left arm and leg on the image's right. The colour follows the person's
    side (the keypoint names), not the side of the image."""
    points = {"left_shoulder": (300, 100), "left_elbow": (300, 220), "left_hip": (280, 260), "left_knee": (340, 380),
              "right_shoulder": (100, 100), "right_elbow": (100, 220), "right_hip": (120, 260),
              "right_knee": (60, 380)}
    blank = np.zeros((420, 400, 3), np.uint8)
    image = draw_people(blank, [person(points)])
    assert image.shape == blank.shape and not blank.any()  # drawn on a copy
    for joint_a, joint_b, warm in [("left_shoulder", "left_elbow", True), ("left_hip", "left_knee", True),
                                   ("right_shoulder", "right_elbow", False), ("right_hip", "right_knee", False)]:
        assert_hue(along(image, points[joint_a], points[joint_b]), warm)
    # A limb joining the two sides (shoulder to shoulder) is neither: green dominates.
    red, green, blue = along(image, points["right_shoulder"], points["left_shoulder"]).T
    assert (green > 180).all() and (red < 100).all() and (blue < 100).all()
    # The keypoint dots take their own side's colour.
    x, y = points["left_elbow"]
    assert_hue(image[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3), warm=True)
    x, y = points["right_elbow"]
    assert_hue(image[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3), warm=False)
    # Nothing else is drawn: a keypoint below the threshold draws neither its dot nor its limbs.
    unshown = person({**points, "left_wrist": (300, 330)})
    unshown[NAMES.index("left_wrist"), 2] = 0.05
    np.testing.assert_array_equal(draw_people(blank, [unshown]), image)


def test_other_keypoint_sets_colour_sides_by_their_names():
    """l_/r_ names (as `KeypointSet.from_category` infers pairs from) give the same warm/cool sides."""
    hand = KeypointSet(("root", "l_tip", "r_tip"), ((0, 1), (0, 2)), ((1, 2),), (0.05,) * 3)
    keypoints = np.array([[200.0, 50, 1], [300, 250, 1], [100, 250, 1]])
    image = draw_people(np.zeros((300, 400, 3), np.uint8), [keypoints], keypoint_set=hand)
    # root is on neither side, so both limbs are centre-coloured; only the tips' own dots show the sides.
    x, y = 300, 250
    assert_hue(image[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3), warm=True)
    x, y = 100, 250
    assert_hue(image[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3), warm=False)


def test_grid_tiles_images_row_by_row():
    red, blue = np.zeros((10, 20, 3), np.uint8), np.zeros((20, 20, 3), np.uint8)
    red[..., 0], blue[..., 2] = 255, 255
    tiled = grid([red, blue, red], columns=2, height=10)
    assert tiled.shape == (20, 40, 3)  # two rows of two tiles; the blue one resized to 10x10, padded to 20 wide
    assert (tiled[:, :20][:10, :, 0] == 255).all() and (tiled[:10, 20:30, 2] == 255).all()
    assert (tiled[10:, 20:] == 0).all()  # the missing fourth tile is black
