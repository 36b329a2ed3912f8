"""Native CPU kernels: C++ sources here, compiled on first use into a per-user cache and called as XLA FFI targets.

Only hot paths where XLA:CPU is measured to lose get one (`benchmarks/voting.py`); each has a pure-JAX twin that
accelerators use and that stays the reference. Compiling needs a C++17 compiler (`$CXX`, else c++/g++/clang++ on
PATH) and takes about 5 s, once per source version, jaxlib version and machine type. Without a compiler, or with
`HVPOSE_NATIVE=0`, `ffi_target` returns None with the reason logged once, and callers use their JAX twin. Kernels
split their work into as many tasks as the process has cores, or `$HVPOSE_NATIVE_THREADS`, and run them on XLA's own
CPU thread pool (shared by every CPU device of the process, so several devices voting at once do not oversubscribe
the cores).

The cache is `$HVPOSE_CACHE_DIR/native`, else `$XDG_CACHE_HOME/hvpose/native`, else `~/.cache/hvpose/native`.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import threading

import jax
import jaxlib

log = logging.getLogger(__name__)

SOURCES = pathlib.Path(__file__).resolve().parent
# FFI target name -> (source file, exported handler symbol).
TARGETS = {"hvpose_hough_vote_cpu": ("hough_vote_cpu.cc", "HvposeHoughVoteCpu")}


def cache_dir() -> pathlib.Path:
    if os.environ.get("HVPOSE_CACHE_DIR"):
        return pathlib.Path(os.environ["HVPOSE_CACHE_DIR"]) / "native"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "hvpose" / "native"


def find_compiler() -> str | None:
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-pthread")
COMPILE_TIMEOUT_SECONDS = 300


def compile_library(source: pathlib.Path, compiler: str, rebuild: bool = False) -> pathlib.Path:
    """The shared library built from `source`, compiled unless the cache has it (or `rebuild`). The file name is a
    hash of the source, the compiler and its version, the flags, jaxlib's version and the machine type. Raises
    RuntimeError with the compiler's output."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False,
                             timeout=60).stdout
    key = hashlib.sha256("\0".join([source.read_text(), compiler, version, " ".join(FLAGS), jaxlib.__version__,
                                    platform.machine()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"{source.stem}-{key}.so"
    if target.exists() and not rebuild:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("compiling %s (once; cached in %s)", source.name, target.parent)
    # A private temporary name, then an atomic rename: concurrent first uses (test workers, hosts sharing a home
    # directory) never load a half-written library.
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so.tmp", delete=False) as tmp:
        partial = pathlib.Path(tmp.name)
    command = [compiler, *FLAGS, "-isystem", jax.ffi.include_dir(), str(source), "-o", str(partial)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False,
                                timeout=COMPILE_TIMEOUT_SECONDS)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
        os.replace(partial, target)
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"{' '.join(command)} took over {COMPILE_TIMEOUT_SECONDS} s") from error
    finally:
        partial.unlink(missing_ok=True)
    return target


def load_library(source: pathlib.Path, compiler: str) -> ctypes.CDLL:
    """The compiled `source`, loaded; a cached library that does not load (truncated, say) is rebuilt once."""
    try:
        return ctypes.cdll.LoadLibrary(str(compile_library(source, compiler)))
    except OSError as error:
        log.warning("cached %s did not load (%s); rebuilding it", source.name, error)
        return ctypes.cdll.LoadLibrary(str(compile_library(source, compiler, rebuild=True)))


_registering = threading.Lock()


def ffi_target(name: str) -> str | None:
    """Registers native target `name` for the CPU platform and returns its name, or None (reason logged once) when
    native kernels are disabled (`HVPOSE_NATIVE=0`) or cannot be compiled here. Thread-safe: concurrent first
    traces compile and register once."""
    with _registering:
        return _register(name)


@functools.cache
def _register(name: str) -> str | None:
    if os.environ.get("HVPOSE_NATIVE", "1") == "0":
        log.info("native kernels disabled by HVPOSE_NATIVE=0; %s uses its JAX twin", name)
        return None
    source_name, symbol = TARGETS[name]
    compiler = find_compiler()
    if compiler is None:
        log.warning("no C++ compiler found ($CXX, c++, g++, clang++): %s uses its slower JAX twin", name)
        return None
    try:
        library = load_library(SOURCES / source_name, compiler)
    except (RuntimeError, OSError) as error:
        log.warning("native kernel %s unavailable, using its JAX twin: %s", name, error)
        return None
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    return name


def cpu_threads() -> int:
    """Tasks a native kernel splits its work into (at most this many run at once, on XLA's CPU thread pool):
    `$HVPOSE_NATIVE_THREADS` if set, else the cores this process may run on.
    Read when a function is traced (it is a constant of the compiled call)."""
    if os.environ.get("HVPOSE_NATIVE_THREADS"):
        return max(1, int(os.environ["HVPOSE_NATIVE_THREADS"]))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


__all__ = ["cache_dir", "compile_library", "cpu_threads", "ffi_target", "find_compiler", "load_library"]
