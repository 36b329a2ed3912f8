"""faiss backend: scanning every cell (and, for the weighted distance, re-ranking every row) is exact search;
fewer cells trade recall; mirrored lists merge."""

import os

import numpy as np
import pytest

from conftest import import_or_skip
from hvpose.search.embedding import embed_poses
from hvpose.search.exact import ExactSearch


def _database(rng, n=2000):
    # Clustered poses (a few hundred base poses, jittered): the structure inverted files rely on.
    base = rng.uniform(0, 100, (n // 10, 17, 2))
    xy = np.repeat(base, 10, axis=0) + rng.normal(0, 2.0, (n, 17, 2))
    keypoints = np.concatenate([xy, rng.uniform(0.05, 1.0, (n, 17, 1))], -1)
    return embed_poses(keypoints, np.concatenate([xy.min(1), np.ptp(xy, axis=1)], 1))


@pytest.mark.parametrize("distance", ["cosine", "weighted"])
def test_scanning_every_cell_is_exact(rng, distance):
    import_or_skip("faiss")
    from hvpose.search.approximate import ApproximateSearch

    database = _database(rng)
    queries = database.take(slice(0, 2000, 97))
    exact_distances, exact_rows, _ = ExactSearch(database, distance).search(queries, 10)
    full = ApproximateSearch(database, distance, "ivf", cells=16, nprobe=16, rerank=200)
    distances, rows, mirrored = full.search(queries, 10)
    np.testing.assert_array_equal(rows, exact_rows)
    np.testing.assert_allclose(distances, exact_distances, atol=1e-5)
    assert not mirrored.any()
    partial = ApproximateSearch(database, distance, "ivf", cells=64, nprobe=4)
    _, rows, _ = partial.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact_rows, strict=True)])
    assert 0.5 < recall <= 1.0


def test_hnsw_and_mirrored_merging(rng):
    import_or_skip("faiss")
    from hvpose.search.approximate import ApproximateSearch, merge_mirrored

    database = _database(rng, 500)
    queries = database.take(slice(0, 5))
    distances, rows, mirrored = ApproximateSearch(database, "cosine", "hnsw").search(queries, 4, mirrored=queries)
    assert np.all(rows[:, 0] == np.arange(5)) and len(set(rows[0])) == 4
    # A row in both lists keeps its smaller distance and says which side gave it.
    merged = merge_mirrored((np.array([[0.1, 0.3]]), np.array([[7, 8]])), (np.array([[0.2, 0.25]]),
                                                                         np.array([[8, 9]])), k=3)
    np.testing.assert_array_equal(merged[1], [[7, 8, 9]])
    np.testing.assert_allclose(merged[0], [[0.1, 0.2, 0.25]])
    np.testing.assert_array_equal(merged[2], [[False, True, True]])
    with pytest.raises(ValueError, match="structure"):
        ApproximateSearch(database, "cosine", "lsh")


def test_the_built_structure_is_kept_and_reused(rng, tmp_path):
    import_or_skip("faiss")
    from hvpose.search.approximate import ApproximateSearch

    database = _database(rng, 1000)
    path = str(tmp_path / "faiss-ivf.index")
    built = ApproximateSearch(database, "weighted", index_file=path, nprobe=4)
    written = os.stat(path).st_mtime_ns
    reused = ApproximateSearch(database, "weighted", index_file=path, nprobe=4, seed=99)
    assert os.stat(path).st_mtime_ns == written  # read, not rebuilt
    queries = database.take(slice(0, 1000, 50))
    np.testing.assert_array_equal(built.search(queries, 5)[1], reused.search(queries, 5)[1])
    other = _database(np.random.default_rng(5), 500)
    assert ApproximateSearch(other, "weighted", index_file=path).index.ntotal == 500  # stale: rebuilt
