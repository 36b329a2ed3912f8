"""Exact search: the same neighbours as sorting the direct distances; mirrored matches; 8 devices = 1 device."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hvpose.keypoints import COCO17
from hvpose.search.distances import pairwise
from hvpose.search.embedding import embed_poses, mirror_keypoints
from hvpose.search.exact import ExactSearch, NumpySearch


def _poses(rng, n):
    xy = rng.uniform(0, 100, (n, 17, 2))
    keypoints = np.concatenate([xy, rng.uniform(0.05, 1.0, (n, 17, 1))], -1)
    return keypoints, np.concatenate([xy.min(1), np.ptp(xy, axis=1)], 1)


@pytest.mark.parametrize("distance", ["cosine", "weighted"])
def test_exact_search_returns_the_nearest_poses(rng, distance):
    keypoints, boxes = _poses(rng, 300)
    database = embed_poses(keypoints, boxes)
    noisy = keypoints[:9].copy()
    noisy[..., :2] += rng.normal(0, 2.0, noisy[..., :2].shape)
    queries = embed_poses(noisy, boxes[:9])
    expected = pairwise(queries, database, distance)
    distances, rows, mirrored = ExactSearch(database, distance).search(queries, k=6)
    np.testing.assert_array_equal(rows, np.argsort(expected, axis=1)[:, :6])
    np.testing.assert_allclose(distances, np.take_along_axis(expected, rows, axis=1), atol=2e-6)
    assert np.all(rows[:, 0] == np.arange(9)) and not mirrored.any()
    np.testing.assert_array_equal(NumpySearch(database, distance).search(queries, 6)[1], rows)
    assert ExactSearch(database.take(slice(0, 4)), distance).search(queries, k=10)[1].shape == (9, 4)


def test_mirrored_search_finds_a_mirror_image_and_says_so(rng):
    keypoints, boxes = _poses(rng, 200)
    database = embed_poses(keypoints, boxes)
    flipped = mirror_keypoints(keypoints[:5], boxes[:5], COCO17.flip_permutation())
    queries = embed_poses(flipped, boxes[:5])
    back = embed_poses(mirror_keypoints(flipped, boxes[:5], COCO17.flip_permutation()), boxes[:5])
    search = ExactSearch(database, "weighted")
    _, rows, mirrored = search.search(queries, k=3, mirrored=back)
    assert np.all(rows[:, 0] == np.arange(5)) and np.all(mirrored[:, 0])
    plain_distances, _, _ = search.search(queries, k=1)
    assert np.all(plain_distances[:, 0] > 1e-3)  # without mirroring the mirror image is far


@pytest.mark.slow
def test_sharded_search_on_eight_devices_equals_one_device(tmp_path):
    """1,001 poses (not a multiple of 8) and k = 200 (more than a device's 126 rows)."""
    script = textwrap.dedent("""
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        import jax, numpy as np
        from hvpose.search.embedding import embed_poses
        from hvpose.search.exact import ExactSearch
        assert jax.device_count() == 8
        rng = np.random.default_rng(1)
        xy = rng.uniform(0, 100, (1001, 17, 2))
        keypoints = np.concatenate([xy, rng.uniform(0.05, 1.0, (1001, 17, 1))], -1)
        database = embed_poses(keypoints, np.concatenate([xy.min(1), np.ptp(xy, axis=1)], 1))
        queries = database.take(slice(990, 1001))
        one = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1],
                            axis_types=(jax.sharding.AxisType.Auto,))
        for distance in ("cosine", "weighted"):
            sharded = ExactSearch(database, distance)
            assert sharded.mesh.size == 8
            assert {s.data.shape[1] for s in sharded._database.addressable_shards} == {126}
            for k in (5, 200):
                d8, r8, m8 = sharded.search(queries, k, mirrored=queries)
                d1, r1, m1 = ExactSearch(database, distance, mesh=one).search(queries, k, mirrored=queries)
                np.testing.assert_array_equal(r8, r1)
                np.testing.assert_allclose(d8, d1, atol=1e-6)
                assert r8.max() < 1001 and np.all(r8[:, 0] == np.arange(990, 1001))
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
