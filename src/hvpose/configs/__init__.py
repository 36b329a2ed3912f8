"""hvpose's configs (ml_collections): `coco` (the paper), `demo` (the CPU demo), `posenet` (PoseNet's weights)."""
