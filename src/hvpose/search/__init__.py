"""Pose search (Move Mirror's idea, exact and at scale): find the photos whose people stand like a query person.

    from hvpose.search import PoseIndex, PoseSearch, build_index
    build_index("photos/", predictor, "poses/")                 # every person of every photo, resumable
    search = PoseSearch(PoseIndex.load("poses/"), distance="weighted")
    matches = search.query(person.keypoints, person.box, k=8, mirror=True)

Command line: `python -m hvpose.search index ...` and `python -m hvpose.search query ...` (see `__main__`).
Embedding: `embedding.py`; the distances as one matrix product: `distances.py`; exact sharded search:
`exact.py`; faiss: `approximate.py`; the picture of a query and its matches: `picture.py`.
"""

from hvpose.search.embedding import PoseEmbeddings, embed_poses, mirror_keypoints
from hvpose.search.index import PoseIndex, build_index
from hvpose.search.searcher import Match, PoseSearch

__all__ = ["Match", "PoseEmbeddings", "PoseIndex", "PoseSearch", "build_index", "embed_poses", "mirror_keypoints"]
