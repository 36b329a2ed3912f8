"""What every benchmark shares: the machine it ran on (so recorded results say where they came from), timing,
and writing its results as JSON."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import re
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model, core count, accelerator, library versions and a short file-name-safe `name`."""
    devices = jax.devices()
    backend = devices[0].platform
    accelerator = devices[0].device_kind if backend != "cpu" else None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # CPU results name the CPU model too: the same core count on another model is another machine.
    cpu = re.sub(r"\(r\)|\(tm\)|\bprocessor\b|\bcpu\b|@.*$", " ", cpu_model().lower())
    name = re.sub(r"[^a-z0-9]+", "-", accelerator.lower() if accelerator else f"{cpu} {cores}cores").strip("-")
    return {
        "name": name,
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": cores,
        "jax_backend": backend,
        "accelerator": accelerator,
        "device_count": len(devices),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpy": __import__("numpy").__version__,
    }


def run_times(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Wall times of `repeats` calls of `fn` (results awaited) after one warm-up call (compilation)."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    """Best wall time of `repeats` calls of `fn` after a warm-up call."""
    return min(run_times(fn, repeats))


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of `repeats` calls of `fn` after a warm-up call."""
    return sorted(run_times(fn, repeats))[repeats // 2]


def write_results(out: pathlib.Path, benchmark: str, settings: dict[str, Any], machine: dict[str, Any],
                  rows: list[dict[str, Any]]) -> None:
    """Writes `{"benchmark", "config", "machine", "results"}` to `out` and says where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {key: value if isinstance(value, (int, float, bool, type(None))) else str(value)
                for key, value in settings.items()}
    out.write_text(json.dumps({"benchmark": benchmark, "code": code_version(), "date": time.strftime("%Y-%m-%d"),
                               "config": settings | {"out": out.name}, "machine": machine, "results": rows},
                              indent=2) + "\n")
    print(f"wrote {os.path.relpath(out)}")


def code_version() -> dict[str, Any]:
    """The commit measured, and whether tracked files differed from it (a result of uncommitted code)."""
    repo = pathlib.Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "uncommitted_changes": bool(git("status", "--porcelain",
                                                                                 "--untracked-files=no"))}


# Dense peak FLOP/s per chip from the vendors' spec sheets (no sparsity), by a substring of `device_kind`.
PEAK_FLOPS = {
    "H200": {"bfloat16": 989e12, "float32": 494e12},
    "H100": {"bfloat16": 989e12, "float32": 494e12},
    "A100": {"bfloat16": 312e12, "float32": 156e12},
    "TPU v6 lite": {"bfloat16": 918e12},
    "TPU v5p": {"bfloat16": 459e12},
    "TPU v5 lite": {"bfloat16": 197e12},
    "TPU v4": {"bfloat16": 275e12},
}


def peak_flops(dtype: str, repeats: int) -> tuple[float | None, str]:
    """Peak FLOP/s of one device for `dtype`, and where the figure comes from."""
    device = jax.devices()[0]
    for kind, peaks in PEAK_FLOPS.items():
        if kind in device.device_kind:
            return peaks.get(dtype), f"{kind} spec sheet"
    if device.platform != "cpu":
        return None, f"unknown device {device.device_kind!r}"
    size = 2048
    a = jnp.ones((size, size), jnp.dtype(dtype))
    matmul = jax.jit(lambda x: x @ x)
    return 2 * size**3 / best_time(lambda: matmul(a), repeats), f"measured {size}x{size} {dtype} matmul"


def compile_with_flops(jitted: Any, *args: Any) -> tuple[Any, float | None]:
    """The compiled function (compiled once, then timed) and its FLOPs per call from XLA's cost analysis."""
    compiled = jitted.lower(*args).compile()
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return compiled, (float(analysis["flops"]) if analysis and "flops" in analysis else None)
