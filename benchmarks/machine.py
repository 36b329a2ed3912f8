"""Describes the machine a benchmark ran on, so recorded results say where they came from."""

from __future__ import annotations

import os
import platform
import re
import socket
from typing import Any

import jax


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
    name = re.sub(r"[^a-z0-9]+", "-", (accelerator or f"cpu{cores}").lower()).strip("-")
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
