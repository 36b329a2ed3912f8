"""glibc malloc settings for CPU processes: keep large freed blocks and reuse them instead of returning them.

XLA:CPU allocates each execution's buffers with malloc and frees them when it ends; for a train step they are
tens to hundreds of megabytes. glibc serves blocks that large with mmap and gives them back with munmap, and
threads other than the main one allocate from their own arenas, which hand such blocks to mmap whatever the
threshold. So every step maps fresh memory and the kernel faults in and zeroes every page of it again: on two CPU
cores that kernel time is a large part of the step (`benchmarks/allocator.py` measures it; README, "Set-up").

`reuse_freed_memory()` makes every thread allocate from the main arena (`M_ARENA_MAX` 1), never with mmap
(`M_MMAP_MAX` 0), and keeps up to 2 GiB of free memory at the top of the heap (`M_TRIM_THRESHOLD`), so a step's
buffers land on pages an earlier step already touched. The arithmetic is the same; the process keeps its peak
memory instead of giving it back between steps.

`python -m hvpose.main`, `hvpose.predict` and `hvpose.search` call it first thing; a notebook or script may call it
itself, before JAX runs anything (threads bind to an arena on their first allocation). `HVPOSE_MALLOC` chooses:
`auto` (the default: only where JAX can run on nothing but the CPU), `reuse` (always) or `system` (glibc's own
defaults). Elsewhere than Linux with glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os

from hvpose.errors import ConfigError

ENV_VAR = "HVPOSE_MALLOC"
CHOICES = ("auto", "reuse", "system")

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_TRIM_THRESHOLD_BYTES = 2**31 - 1  # mallopt takes an int: the largest, 2 GiB


def cpu_only() -> bool:
    """Whether JAX can run on nothing but the CPU here: `JAX_PLATFORMS` names only `cpu`, or, when it is unset, no
    accelerator plugin (libtpu, a `jax_plugins` entry point such as the CUDA plugin) is installed."""
    platforms = [name.strip() for name in os.environ.get("JAX_PLATFORMS", "").split(",") if name.strip()]
    if platforms:
        return all(name == "cpu" for name in platforms)
    if importlib.util.find_spec("libtpu") is not None:
        return False
    return not importlib.metadata.entry_points(group="jax_plugins")


def glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (the one with `mallopt`), else None."""
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        return None
    if not version or not version.startswith("glibc"):
        return None
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "mallopt") else None


def reuse_freed_memory() -> bool:
    """Apply the settings above as `HVPOSE_MALLOC` says; call before JAX runs anything. Returns whether they were
    applied. An unknown `HVPOSE_MALLOC` is a `ConfigError` naming the choices."""
    choice = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ConfigError(f"{ENV_VAR}={os.environ[ENV_VAR]!r}: expected one of {', '.join(CHOICES)}")
    if choice == "system" or (choice == "auto" and not cpu_only()):
        return False
    libc = glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success, 0 on a rejected value.
    return all([mallopt(_M_ARENA_MAX, 1), mallopt(_M_MMAP_MAX, 0),
                mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)])
