"""The distances' matrix-product form equals their direct formulas, written here as plain loops."""

import numpy as np
import pytest

from hvpose.search.distances import database_rows, pairwise, query_rows
from hvpose.search.embedding import embed_poses


def _embedded(rng, n, k=17, dropped=0.2):
    xy = rng.uniform(0, 100, (n, k, 2))
    confidence = rng.uniform(0.0, 1.0, (n, k, 1))
    confidence[rng.random((n, k)) < dropped] = 0.0
    confidence[:, 0] = 0.9  # every pose keeps at least one keypoint
    boxes = np.concatenate([xy.min(1), np.ptp(xy, axis=1)], 1)
    return embed_poses(np.concatenate([xy, confidence], -1), boxes)


def _loops(queries, database, distance):
    out = np.zeros((len(queries), len(database)))
    for i in range(len(queries)):
        for j in range(len(database)):
            u = queries.vectors[i].astype(np.float64).reshape(-1, 2)
            v = database.vectors[j].astype(np.float64).reshape(-1, 2)
            if distance == "cosine":
                out[i, j] = 1.0 - np.sum(u * v)
            else:
                c = queries.weights[i].astype(np.float64) * database.weights[j].astype(np.float64)
                out[i, j] = sum(c[k] * np.sum((u[k] - v[k]) ** 2) for k in range(len(c))) / c.sum()
    return out


@pytest.mark.parametrize("distance", ["cosine", "weighted"])
def test_matrix_product_equals_the_direct_formula(rng, distance):
    queries, database = _embedded(rng, 7), _embedded(rng, 50)
    expected = _loops(queries, database, distance)
    np.testing.assert_allclose(pairwise(queries, database, distance), expected, atol=1e-12)
    rows, weights = query_rows(queries, distance)
    table, table_weights = database_rows(database, distance)
    assert rows.dtype == table.dtype == np.float32
    assert table.shape == (50, 35 if distance == "cosine" else 68)
    product = rows @ table.T  # float32 throughout
    if distance == "weighted":
        product = product / (weights @ table_weights.T)
    np.testing.assert_allclose(product, expected, atol=2e-6)
    assert np.all(np.argsort(product, axis=1)[:, :3] == np.argsort(expected, axis=1)[:, :3])


def test_weighted_distance_of_a_pose_to_itself_is_zero_and_grows_with_error(rng):
    poses = _embedded(rng, 4, dropped=0.0)
    rows, weights = query_rows(poses, "weighted")
    table, table_weights = database_rows(poses, "weighted")
    self_distance = np.diag(rows @ table.T / (weights @ table_weights.T))
    np.testing.assert_allclose(self_distance, 0.0, atol=1e-6)


def test_weighted_distance_counts_only_shared_keypoints(rng):
    """A keypoint one side lacks does not count, wherever the other side put it; nothing shared: inf."""
    poses = _embedded(rng, 3, dropped=0.0)
    weights = poses.weights.copy()
    weights[1, 5:] = 0.0  # pose 1 lacks keypoints 5.. (as unlabelled ground truth would)
    weights[2, :] = 0.0
    weights[2, 16] = 0.7
    vectors = poses.vectors.copy()
    vectors[1] = vectors[0]
    vectors[1, 10:] = 0.0
    database = type(poses)(vectors, weights)
    query = database.take(slice(0, 1))
    query.weights[0, 16] = 0.0  # the query lacks the only keypoint pose 2 has
    distance = pairwise(query, database, "weighted")[0]
    assert distance[1] == pytest.approx(0.0, abs=1e-12) and np.isinf(distance[2])


def test_weighted_query_without_keypoints_is_refused(rng):
    poses = _embedded(rng, 2)
    poses.weights[1] = 0.0
    with pytest.raises(ValueError, match="no keypoint above"):
        query_rows(poses, "weighted")
    with pytest.raises(ValueError, match="not one of"):
        query_rows(poses, "l1")
