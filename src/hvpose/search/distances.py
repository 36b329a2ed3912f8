"""The two pose distances, each written as matrix products, so exact search is a matmul plus top-k.

For a query i and a database pose j (both `PoseEmbeddings`: unit vectors u with per-keypoint weights c, where u_ik
is keypoint k's (x, y) and c_ik its confidence, 0 for a dropped keypoint):

  cosine:   D_ij = 1 - <u_i, u_j>
  weighted: D_ij = sum_k c_ik c_jk |u_ik - u_jk|^2 / sum_k c_ik c_jk     (inf when no keypoint is shared)

`weighted` is Move Mirror's confidence-weighted distance, squared so that it expands into matrix products, and
weighted by both sides' confidences: Move Mirror weights by the query's alone, which charges a correct match for
every keypoint the database pose lacks (unlabelled keypoints of ground truth, occluded ones) wherever the query
put it. Expanding the square:

  numerator_ij   = sum_k c_ik |u_ik|^2 c_jk - 2 sum_k <c_ik u_ik, c_jk u_jk> + sum_k c_ik (c_jk |u_jk|^2)
                 = <a_i, e_j>   with a_i = [c_ik |u_ik|^2 (K), -2 c_ik u_ik (2K), c_ik (K)]
                                     e_j = [c_jk (K),          c_jk u_jk (2K),    c_jk |u_jk|^2 (K)]
  denominator_ij = <c_i, c_j>

Cosine is the numerator alone with a_i = [-u_i, 1] and e_j = [u_j, 1]. So all distances between Q queries and N
poses are `(A @ E.T) / (C_q @ C_db.T)`: a (Q, 4K) x (4K, N) and a (Q, K) x (K, N) product on any backend.
"""

from __future__ import annotations

import numpy as np

from hvpose.search.embedding import PoseEmbeddings

DISTANCES = ("cosine", "weighted")


def check_distance(distance: str) -> str:
    if distance not in DISTANCES:
        raise ValueError(f"distance {distance!r} is not one of {list(DISTANCES)}")
    return distance


def _squared(poses: PoseEmbeddings) -> np.ndarray:
    return (poses.vectors.astype(np.float64).reshape(len(poses), -1, 2) ** 2).sum(-1)


def database_rows(database: PoseEmbeddings, distance: str) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 rows e_j (N, 2K + 1 for cosine, 4K for weighted) and, for weighted, the weights c_j (N, K)."""
    if check_distance(distance) == "cosine":
        return np.concatenate([database.vectors, np.ones((len(database), 1))], 1).astype(np.float32), None
    c = database.weights.astype(np.float64)
    rows = np.concatenate([c, np.repeat(c, 2, axis=1) * database.vectors, c * _squared(database)], 1)
    return rows.astype(np.float32), database.weights.astype(np.float32)


def query_rows(queries: PoseEmbeddings, distance: str) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 rows a_i (Q, 2K + 1 or 4K) and, for weighted, the weights c_i (Q, K).

    Raises ValueError for a weighted query with no keypoint kept (it shares no keypoint with anything).
    """
    if check_distance(distance) == "cosine":
        return np.concatenate([-queries.vectors, np.ones((len(queries), 1))], 1).astype(np.float32), None
    c = queries.weights.astype(np.float64)
    if np.any(c.sum(1) <= 0):
        raise ValueError(f"{int(np.sum(c.sum(1) <= 0))} query pose(s) have no keypoint above the confidence "
                         "threshold")
    rows = np.concatenate([c * _squared(queries), -2 * np.repeat(c, 2, axis=1) * queries.vectors, c], 1)
    return rows.astype(np.float32), queries.weights.astype(np.float32)


def combine(numerator: np.ndarray, denominator: np.ndarray | None) -> np.ndarray:
    """numerator / denominator, inf where the denominator is 0 (no shared keypoint); numpy or jax arrays."""
    if denominator is None:
        return numerator
    xp = np if isinstance(numerator, np.ndarray) else __import__("jax.numpy").numpy
    shared = denominator > 0
    return xp.where(shared, numerator / xp.where(shared, denominator, 1), xp.inf)


def pairwise(queries: PoseEmbeddings, database: PoseEmbeddings, distance: str) -> np.ndarray:
    """(Q, N) distances by the direct formulas above (float64 numpy; the reference for the matrix products)."""
    u = queries.vectors.astype(np.float64)
    v = database.vectors.astype(np.float64)
    if check_distance(distance) == "cosine":
        return 1.0 - u @ v.T
    w = queries.weights.astype(np.float64)[:, None, :] * database.weights.astype(np.float64)[None, :, :]
    diff = u.reshape(len(u), 1, -1, 2) - v.reshape(1, len(v), -1, 2)
    return combine((w * (diff ** 2).sum(-1)).sum(-1), w.sum(-1))


__all__ = ["DISTANCES", "check_distance", "combine", "database_rows", "pairwise", "query_rows"]
