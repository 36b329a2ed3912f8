"""`python -m hvpose.search`: build a pose index of a photo folder, then find the photos whose people stand like
the person in a query photo.

    python -m hvpose.search index --images PHOTOS/ --weights WORKDIR_OR_POSENET_JSON --out POSES/ \\
        [--detector DETECTOR_WORKDIR]
    python -m hvpose.search index --images IMAGES/ --annotations PERSON_KEYPOINTS.json --out POSES/
    python -m hvpose.search query --index POSES/ --image PHOTO.jpg --k 8 --out MATCHES.png \\
        [--distance weighted|cosine] [--mirror] [--backend exact|faiss] [--weights ...] [--person N]

`index` runs every photo through the predictor (its detector finds the people) with a progress bar; unreadable
photos are skipped and counted; run it again to resume an interrupted build or add new photos. With
`--annotations` the labelled people of a COCO-format file are the database (no network). `query` finds the people
in the query photo with the same weights (or `--weights`), takes the `--person`-th best (0: the highest score),
prints one JSON line per match (rank, distance, photo, box, mirrored) and draws the query beside its matches.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from hvpose.search.embedding import DEFAULT_THRESHOLD


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hvpose.search", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    index = commands.add_parser("index", help="index every person of every photo in a folder")
    index.add_argument("--images", required=True, help="folder of photos (searched recursively)")
    source = index.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", help="an hvpose training workdir or a PoseNet TF.js model.json")
    source.add_argument("--annotations", help="a COCO-format keypoint file: its labelled people are the database")
    index.add_argument("--detector", help="a person detector's workdir (finds the people; PoseNet weights find "
                       "them with PoseNet's own decoding)")
    index.add_argument("--out", required=True, help="the index folder to write (or resume)")
    index.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                       help="keypoints less confident carry no weight (default %(default)s)")
    index.add_argument("--min_score", type=float, default=0.1,
                       help="people with a lower instance score are not indexed (default %(default)s)")
    index.add_argument("--chunk", type=int, default=64, help="photos per saved part (the resume granularity)")

    query = commands.add_parser("query", help="the photos whose people stand like the person in a photo")
    query.add_argument("--index", required=True, help="an index folder")
    query.add_argument("--image", required=True, help="the query photo")
    query.add_argument("--k", type=int, default=8, help="matches to return (default %(default)s)")
    query.add_argument("--distance", choices=("weighted", "cosine"), default="weighted",
                       help="confidence-weighted (Move Mirror) or cosine distance (default %(default)s)")
    query.add_argument("--mirror", action="store_true", help="also match the query's mirror image")
    query.add_argument("--backend", choices=("exact", "faiss"), default="exact",
                       help="exact JAX search or approximate faiss search (default %(default)s); faiss keeps its "
                       "structure in INDEX/faiss-ivf.index after the first query")
    query.add_argument("--weights", help="model for the query photo (default: the one that built the index)")
    query.add_argument("--detector", help="a person detector's workdir for the query photo")
    query.add_argument("--person", type=int, default=0, help="which person of the query photo, best first")
    query.add_argument("--out", help="where to draw the query and its matches (PNG)")
    return parser


def _index(args: argparse.Namespace) -> int:
    from hvpose.search.index import PoseIndex, build_index, list_photos

    if args.annotations:
        index = PoseIndex.from_coco(args.annotations, images=args.images, threshold=args.threshold)
        index.save(args.out)
        print(f"hvpose: indexed {len(index)} labelled people of {len(index.photos)} images into {args.out}",
              file=sys.stderr)
        return 0
    from hvpose.predict import load_predictor

    if not list_photos(args.images):
        print(f"hvpose: error: {args.images}: no photos ({', '.join(('.jpg', '.png', '...'))})", file=sys.stderr)
        return 1
    predictor = load_predictor(args.weights, args.detector)
    report = build_index(args.images, predictor, args.out, weights=args.weights, threshold=args.threshold,
                         min_score=args.min_score, chunk=args.chunk)
    resumed = f" ({report.resumed} from an earlier run)" if report.resumed else ""
    print(f"hvpose: indexed {report.poses} people of {report.photos} photos{resumed} into {args.out}; "
          f"{len(report.skipped)} unreadable photos skipped" + (" (see skipped.json)" if report.skipped else ""),
          file=sys.stderr)
    return 0


def _query(args: argparse.Namespace) -> int:
    from hvpose.predict import load_image, load_predictor
    from hvpose.search.index import PoseIndex
    from hvpose.search.searcher import PoseSearch

    index = PoseIndex.load(args.index)
    weights = args.weights or index.weights
    if not weights:
        print(f"hvpose: error: {args.index} was built from annotations; give --weights for the query photo",
              file=sys.stderr)
        return 1
    predictor = load_predictor(weights, args.detector)
    people = predictor(args.image)
    if len(people) <= args.person:
        print(f"hvpose: error: {args.image}: {len(people)} people found, --person {args.person} asked",
              file=sys.stderr)
        return 1
    person = people[args.person]
    options = {} if args.backend == "exact" else {"index_file": os.path.join(args.index, "faiss-ivf.index")}
    search = PoseSearch(index, args.distance, args.backend, **options)
    matches = search.query(person.keypoints, person.box, args.k, args.mirror)
    for match in matches:
        print(json.dumps(match.to_json()))
    if args.out:
        from hvpose import visualize
        from hvpose.search.picture import draw_matches

        picture = draw_matches(load_image(args.image), person.keypoints, person.box, matches, index.keypoint_set,
                               load_image, index.threshold)
        visualize.save_png(args.out, picture)
    print(f"hvpose: {len(matches)} matches of person {args.person} (score {person.score:.2f}) among {len(index)} "
          f"poses" + (f"; wrote {args.out}" if args.out else ""), file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from hvpose.allocator import reuse_freed_memory
    from hvpose.errors import USER_ERRORS

    try:
        reuse_freed_memory()  # before JAX runs: CPU inference reuses pages instead of faulting in new ones
        return _index(args) if args.command == "index" else _query(args)
    except (OSError, ValueError, ImportError, *USER_ERRORS) as error:
        print(f"hvpose: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
