"""Working directories: local paths made absolute (orbax needs them), URLs such as gs://... unchanged."""

from __future__ import annotations

import os


def resolve_workdir(workdir: str) -> str:
    """Absolute local path of `workdir` (with ~ expanded); URLs (gs://...) unchanged."""
    return workdir if "://" in workdir else os.path.abspath(os.path.expanduser(workdir))


__all__ = ["resolve_workdir"]
