"""Approximate nearest-pose search with faiss, for databases too large for exact search at interactive latency.

The cosine distance is `<a_i, e_j>` (`hvpose.search.distances`), so the nearest poses are the database rows e_j
with the largest inner product with -a_i: a maximum-inner-product search, which faiss indexes directly. The
structure is an inverted file (`IndexIVFFlat`, inner-product metric): k-means cells over the rows, and a query
scans the `nprobe` cells whose centroids score best; HNSW (`IndexHNSWFlat`) is available too. The flat codes keep
the rows unchanged, so the distances of the candidates found are exact; only candidates can be missed, which
`recall@k` against exact search measures (`benchmarks/search.py`).

The weighted distance is a ratio of two products, not an inner product, so faiss proposes candidates by cosine
(`rerank` * k of them) and they are re-ranked with the exact weighted distance.

faiss is optional (`pip install faiss-cpu`, or hvpose's `search` extra).
"""

from __future__ import annotations

import os

import numpy as np

from hvpose.search.distances import check_distance, combine, database_rows, query_rows
from hvpose.search.embedding import PoseEmbeddings

STRUCTURES = ("ivf", "hnsw")


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("approximate search needs faiss: pip install faiss-cpu (or hvpose[search])") from None
    return faiss


class ApproximateSearch:
    """faiss over the expanded database rows.

    Args:
      database: the embedded database poses.
      distance: "cosine" or "weighted".
      structure: "ivf" (inverted file; `cells` k-means cells, `nprobe` scanned per query) or "hnsw" (graph with
        `neighbors` links per node, `ef_search` candidates kept while searching).
      cells: IVF cells; default 4 * sqrt(N), faiss's rule of thumb.
      nprobe, neighbors, ef_search: the structures' recall/speed knobs.
      rerank: for the weighted distance, cosine candidates per match re-ranked exactly.
      threads: faiss's OpenMP threads (default: faiss's own choice, every core).
      index_file: where to keep the built faiss structure: read from it when it holds one for this database (same
        structure, row count and width), else built and written there. Building takes about a minute at 10^6.
    """

    def __init__(self, database: PoseEmbeddings, distance: str = "weighted", structure: str = "ivf",
                 cells: int | None = None, nprobe: int = 32, neighbors: int = 32, ef_search: int = 64,
                 rerank: int = 8, threads: int | None = None, seed: int = 0, index_file: str | None = None):
        faiss = _faiss()
        if structure not in STRUCTURES:
            raise ValueError(f"structure {structure!r} is not one of {list(STRUCTURES)}")
        if threads is not None:
            faiss.omp_set_num_threads(int(threads))
        self.distance, self.structure, self.size = check_distance(distance), structure, len(database)
        self.rerank = max(1, int(rerank))
        rows = np.ascontiguousarray(database_rows(database, "cosine")[0])
        if distance == "weighted":
            self._weighted_rows = database_rows(database, "weighted")
        dimension = rows.shape[1]
        if index_file and os.path.exists(index_file):
            self.index = faiss.read_index(index_file)
            if self.index.ntotal == self.size and self.index.d == dimension and isinstance(
                    self.index, faiss.IndexIVFFlat if structure == "ivf" else faiss.IndexHNSWFlat):
                self._set_knobs(nprobe, ef_search)
                return
        if structure == "ivf":
            cells = cells or max(1, min(int(4 * np.sqrt(self.size)), self.size // 39 or 1))
            quantizer = faiss.IndexFlatIP(dimension)
            self.index = faiss.IndexIVFFlat(quantizer, dimension, cells, faiss.METRIC_INNER_PRODUCT)
            sample = rows[np.random.default_rng(seed).permutation(self.size)[:cells * 64]]
            self.index.cp.seed = seed
            self.index.train(sample)
        else:
            self.index = faiss.IndexHNSWFlat(dimension, neighbors, faiss.METRIC_INNER_PRODUCT)
        self.index.add(rows)
        self._set_knobs(nprobe, ef_search)
        if index_file:
            faiss.write_index(self.index, index_file)

    def _set_knobs(self, nprobe: int, ef_search: int) -> None:
        if self.structure == "ivf":
            self.index.nprobe = min(nprobe, self.index.nlist)
        else:
            self.index.hnsw.efSearch = ef_search

    def search(self, queries: PoseEmbeddings, k: int, mirrored: PoseEmbeddings | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As `ExactSearch.search`: (Q, k) distances, database rows and mirrored flags, nearest first.

        Rows faiss could not fill (fewer than k candidates found) are -1 with distance inf.
        """
        k = min(int(k), self.size)
        results = []
        for side in [queries] if mirrored is None else [queries, mirrored]:
            if self.distance == "cosine":
                scores, indices = self.index.search(np.ascontiguousarray(-query_rows(side, "cosine")[0]), k)
                results.append((np.where(indices >= 0, -scores, np.inf), indices))
            else:
                results.append(self._reranked(side, k))
        if mirrored is None:
            distances, indices = results[0]
            return distances, indices, np.zeros(indices.shape, bool)
        return merge_mirrored(results[0], results[1], k)


    def _reranked(self, queries: PoseEmbeddings, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cosine candidates (rerank * k per query) ordered by the exact weighted distance; the k best."""
        rows, weights = query_rows(queries, "weighted")
        cosine_rows = np.ascontiguousarray(-query_rows(queries, "cosine")[0])
        _, candidates = self.index.search(cosine_rows, min(self.size, self.rerank * k))
        table, table_weights = self._weighted_rows
        safe = np.maximum(candidates, 0)
        distances = combine(np.einsum("qd,qcd->qc", rows, table[safe]),
                            np.einsum("qk,qck->qc", weights, table_weights[safe]))
        distances = np.where(candidates >= 0, distances, np.inf)
        order = np.argsort(distances, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(distances, order, 1), np.take_along_axis(candidates, order, 1)


def merge_mirrored(plain: tuple[np.ndarray, np.ndarray], mirror: tuple[np.ndarray, np.ndarray], k: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k best of two candidate lists per query, each database row once with its smaller distance."""
    distances = np.concatenate([plain[0], mirror[0]], axis=1)
    indices = np.concatenate([plain[1], mirror[1]], axis=1)
    flags = np.concatenate([np.zeros(plain[1].shape, bool), np.ones(mirror[1].shape, bool)], axis=1)
    out = (np.full((len(indices), k), np.inf), np.full((len(indices), k), -1), np.zeros((len(indices), k), bool))
    for q in range(len(indices)):
        order = np.argsort(distances[q], kind="stable")
        _, first = np.unique(indices[q, order], return_index=True)  # the smaller distance of a row seen twice
        chosen = order[np.sort(first)]
        chosen = chosen[indices[q, chosen] >= 0][:k]
        out[0][q, :len(chosen)], out[1][q, :len(chosen)], out[2][q, :len(chosen)] = (
            distances[q, chosen], indices[q, chosen], flags[q, chosen])
    return out


__all__ = ["STRUCTURES", "ApproximateSearch", "merge_mirrored"]
