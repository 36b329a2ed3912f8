"""Anchors against their definition: hand-worked boxes, a loop over cells and anchors, and the conv-output layout."""

import math

import numpy as np
import pytest

from hvpose.ops.anchors import grid_anchors


def test_hand_worked_anchors_of_one_cell():
    """Stride 16: cell (0, 0) is centred at (8, 8). Size 32 ratio 1: 32x32; ratio 4 (h/w): 16 wide, 64 high."""
    anchors = grid_anchors((1, 1), 16, sizes=[32, 64], aspect_ratios=[1.0, 4.0])
    np.testing.assert_allclose(anchors, [
        [-8, -8, 24, 24],  # size 32, ratio 1
        [0, -24, 16, 40],  # size 32, ratio 4: width 16, height 64
        [-24, -24, 40, 40],  # size 64, ratio 1
        [-8, -56, 24, 72],  # size 64, ratio 4: width 32, height 128
    ], rtol=0, atol=1e-5)
    assert anchors.dtype == np.float32 and anchors.shape == (4, 4)


def test_anchors_follow_the_definition_cell_by_cell():
    height, width, stride = 3, 5, 8
    sizes, ratios = [16.0, 40.0, 100.0], [0.5, 1.0, 2.0]
    anchors = grid_anchors((height, width), stride, sizes, ratios)
    assert anchors.shape == (height * width * 9, 4)
    row = 0
    for i in range(height):
        for j in range(width):
            for size in sizes:
                for ratio in ratios:
                    w, h = size / math.sqrt(ratio), size * math.sqrt(ratio)
                    cx, cy = j * stride + stride / 2, i * stride + stride / 2
                    np.testing.assert_allclose(anchors[row], [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2],
                                               rtol=1e-6, atol=1e-5)
                    row += 1
    widths, heights = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    np.testing.assert_allclose(np.sqrt(widths * heights), np.tile(np.repeat(sizes, 3), height * width), rtol=1e-5)
    np.testing.assert_allclose(heights / widths, np.tile(ratios, 3 * height * width), rtol=1e-5)


def test_center_offset_and_a_conv_output_line_up():
    anchors = grid_anchors((4, 6), 16, [64.0], [0.5, 1.0], center_offset=0.0)
    grid = anchors.reshape(4, 6, 2, 4)  # as a conv output (h, w, A * 4) reshaped to (h, w, A, 4)
    centres = 0.5 * (grid[..., :2] + grid[..., 2:])  # (h, w, A, (x, y))
    expected_x = np.broadcast_to(16.0 * np.arange(6)[None, :, None], (4, 6, 2))
    expected_y = np.broadcast_to(16.0 * np.arange(4)[:, None, None], (4, 6, 2))
    np.testing.assert_allclose(centres[..., 0], expected_x, atol=1e-5)
    np.testing.assert_allclose(centres[..., 1], expected_y, atol=1e-5)
    widths = grid[..., 2] - grid[..., 0]  # anchor a of every cell has ratio aspect_ratios[a]
    np.testing.assert_allclose(widths[..., 0], 64 / math.sqrt(0.5), rtol=1e-6)
    np.testing.assert_allclose(widths[..., 1], 64.0, rtol=1e-6)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError):
        grid_anchors((2, 2), 16, [], [1.0])
    with pytest.raises(ValueError):
        grid_anchors((2, 2), 16, [32.0], [0.0])
