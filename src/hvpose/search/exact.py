"""Exact k-nearest-pose search in JAX: distances by matrix products, top-k, database rows sharded over devices.

The database's rows (`distances.database_rows`, with their weights) are split across a 1-D mesh of every device
(padded to a multiple of the device count; padding rows never win). Each device computes its block of the
distances (`A @ E.T`, divided by `C_q @ C_db.T` for the weighted distance) and its own top-k; the candidates
(k per device) are gathered and the global top-k taken, all inside one jitted function. With one device this is a
plain matmul and top-k. Mirrored search evaluates the query and its mirror image and keeps the
smaller distance per database pose before the top-k.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from hvpose.search.distances import check_distance, combine, database_rows, query_rows
from hvpose.search.embedding import PoseEmbeddings
from hvpose.sharding import DATA_AXIS, make_mesh

_PADDING = np.float32(np.inf)  # the distance of padding rows


@functools.partial(jax.jit, static_argnames=("k", "mesh", "weighted"))
def _search(rows: jax.Array, query_weights: jax.Array, database: jax.Array, database_weights: jax.Array,
            valid: jax.Array, *, k: int, mesh: jax.sharding.Mesh, weighted: bool
            ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """rows (M, Q, D), query_weights (M, Q, K) with M = 1, or 2 for a query and its mirror; the database
    transposed, (D, N) and weights (K, N), sharded along N (a (1, D) x (D, N) product reads memory in order: twice
    as fast on CPU as against (N, D)). Unweighted (cosine): the weights are unused placeholders."""
    shard_rows = database.shape[1] // mesh.size
    highest = jax.lax.Precision.HIGHEST

    def local(rows, query_weights, database, database_weights, valid):
        distances = jnp.einsum("mqd,dn->mqn", rows, database, precision=highest)
        if weighted:
            shared = jnp.einsum("mqk,kn->mqn", query_weights, database_weights, precision=highest)
            distances = combine(distances, shared)
        mirrored = jnp.argmin(distances, axis=0)  # 1 where the mirror image is closer
        distances = jnp.where(valid[None], jnp.min(distances, axis=0), _PADDING)
        negated, indices = jax.lax.top_k(-distances, k)
        offset = jax.lax.axis_index(DATA_AXIS) * shard_rows
        return -negated, indices + offset, jnp.take_along_axis(mirrored, indices, axis=1)

    spec = PartitionSpec(None, DATA_AXIS)
    distances, indices, mirrored = jax.shard_map(
        local, mesh=mesh, in_specs=(PartitionSpec(), PartitionSpec(), spec, spec, PartitionSpec(DATA_AXIS)),
        out_specs=(spec, spec, spec))(rows, query_weights, database, database_weights, valid)
    negated, best = jax.lax.top_k(-distances, k)  # merge the devices' candidates
    take = functools.partial(jnp.take_along_axis, indices=best, axis=1)
    return -negated, take(indices), take(mirrored)


class ExactSearch:
    """Exact nearest poses over a database, on every device (the database split across them).

    Args:
      database: the embedded database poses.
      distance: "cosine" or "weighted" (`hvpose.search.distances`).
      mesh: a 1-D mesh whose axis is `hvpose.sharding.DATA_AXIS`; default: every device.
    """

    def __init__(self, database: PoseEmbeddings, distance: str = "weighted", mesh: jax.sharding.Mesh | None = None):
        self.distance = check_distance(distance)
        self.mesh = make_mesh() if mesh is None else mesh
        self.size = len(database)
        self._rows, weights = database_rows(database, distance)
        self._weights = np.zeros((self.size, 1), np.float32) if weights is None else weights
        self._place(1)

    def _place(self, k: int) -> None:
        """Pads the database to a multiple of the device count with at least k rows per device, and shards it."""
        devices = self.mesh.size
        per_device = max(-(-self.size // devices), k)
        total = per_device * devices
        columns = NamedSharding(self.mesh, PartitionSpec(None, DATA_AXIS))

        def put_transposed(array: np.ndarray) -> jax.Array:
            padded = np.zeros((array.shape[1], total), array.dtype)
            padded[:, :self.size] = array.T
            return jax.device_put(padded, columns)

        self._database, self._database_weights = put_transposed(self._rows), put_transposed(self._weights)
        valid = np.zeros(total, bool)
        valid[:self.size] = True
        self._valid = jax.device_put(valid, NamedSharding(self.mesh, PartitionSpec(DATA_AXIS)))
        self._per_device = per_device

    def search(self, queries: PoseEmbeddings, k: int, mirrored: PoseEmbeddings | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The k nearest database poses of each query, nearest first.

        `mirrored`: the queries' mirror images (`embedding.mirror_keypoints`); each database pose then counts with
        the smaller of its two distances. Returns (Q, k) distances, (Q, k) database rows and (Q, k) booleans that
        say where the mirror image matched; k is capped at the database size.
        """
        k = min(int(k), self.size)
        if k < 1:
            raise ValueError("search needs k >= 1 and a non-empty database")
        if k > self._per_device:
            self._place(k)
        sides = [queries] if mirrored is None else [queries, mirrored]
        rows, weights = zip(*(query_rows(side, self.distance) for side in sides), strict=True)
        weighted = weights[0] is not None
        weights = np.stack(weights) if weighted else np.zeros((len(sides), len(queries), 1), np.float32)
        distances, indices, flags = _search(np.stack(rows), weights, self._database, self._database_weights,
                                            self._valid, k=k, mesh=self.mesh, weighted=weighted)
        return np.asarray(distances), np.asarray(indices), np.asarray(flags).astype(bool)


class NumpySearch:
    """The same search in plain numpy (the matrix products, then `argpartition`): the benchmark's baseline."""

    def __init__(self, database: PoseEmbeddings, distance: str = "weighted"):
        self.distance, self.size = check_distance(distance), len(database)
        table, weights = database_rows(database, distance)
        self._table_t = np.ascontiguousarray(table.T)
        self._weights_t = None if weights is None else np.ascontiguousarray(weights.T)

    def search(self, queries: PoseEmbeddings, k: int, mirrored: PoseEmbeddings | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As `ExactSearch.search`."""
        sides = [queries] if mirrored is None else [queries, mirrored]
        all_distances = []
        for side in sides:
            rows, weights = query_rows(side, self.distance)
            all_distances.append(combine(rows @ self._table_t, None if weights is None else weights @ self._weights_t))
        stacked = np.stack(all_distances)
        flags, distances = np.argmin(stacked, axis=0), np.min(stacked, axis=0)
        k = min(int(k), self.size)
        part = np.argpartition(distances, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(distances, part, axis=1), axis=1, kind="stable")
        indices = np.take_along_axis(part, order, axis=1)
        return (np.take_along_axis(distances, indices, axis=1), indices,
                np.take_along_axis(flags, indices, axis=1).astype(bool))


__all__ = ["ExactSearch", "NumpySearch"]
