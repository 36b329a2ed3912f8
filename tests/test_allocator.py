"""hvpose.allocator: glibc keeps large freed blocks for reuse, so repeated XLA executions stop faulting in pages."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hvpose import allocator
from hvpose.errors import ConfigError

needs_glibc = pytest.mark.skipif(allocator.glibc() is None, reason="mallopt is glibc's")

# A child process that runs one jitted computation (a chain of ops over 64 MiB arrays, so XLA allocates buffers for
# each call) twenty times and reports each call's page faults.
CHILD = textwrap.dedent("""
    import json, resource
    from hvpose.allocator import reuse_freed_memory
    applied = reuse_freed_memory()
    import jax, jax.numpy as jnp

    @jax.jit
    def step(x):
        y = jnp.sin(x) * 2.0 + x[::-1]
        return jnp.cumsum(y, axis=0)[-1] + jnp.exp(-y).sum(0)

    x = jnp.ones((4096, 4096), jnp.float32)  # 64 MiB
    step(x).block_until_ready()
    faults = []
    for _ in range(20):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step(x).block_until_ready()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"applied": applied, "faults": faults}))
""")


def run_child(choice: str) -> dict:
    env = {**os.environ, allocator.ENV_VAR: choice, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@needs_glibc
def test_xla_executions_stop_faulting_in_fresh_pages():
    system, reuse = run_child("system"), run_child("reuse")
    assert not system["applied"] and reuse["applied"]
    # glibc's defaults map each call's buffers afresh: a 64 MiB buffer alone is 16,384 pages of 4 KiB. Reused, the
    # heap grows over the first few calls (some buffers outlive the next call's start), then stops faulting.
    steady_system, steady_reuse = np.median(system["faults"][10:]), np.median(reuse["faults"][10:])
    assert steady_system > 10_000, system
    assert steady_reuse < steady_system / 100, (system, reuse)


def test_an_unknown_choice_is_one_line_naming_the_choices(monkeypatch):
    monkeypatch.setenv(allocator.ENV_VAR, "jemalloc")
    with pytest.raises(ConfigError, match=r"HVPOSE_MALLOC='jemalloc': expected one of auto, reuse, system"):
        allocator.reuse_freed_memory()


def test_system_leaves_the_defaults(monkeypatch):
    monkeypatch.setenv(allocator.ENV_VAR, "system")
    assert allocator.reuse_freed_memory() is False


@pytest.mark.parametrize(("platforms", "expected"), [("cpu", True), ("cpu,cpu", True), ("cuda", False),
                                                     ("cuda,cpu", False), ("tpu", False)])
def test_cpu_only_follows_jax_platforms(monkeypatch, platforms, expected):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    assert allocator.cpu_only() is expected


def test_auto_leaves_machines_with_accelerators_alone(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    monkeypatch.setenv(allocator.ENV_VAR, "auto")
    assert allocator.reuse_freed_memory() is False


def test_without_jax_platforms_an_installed_plugin_counts_as_an_accelerator(monkeypatch):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(allocator.importlib.metadata, "entry_points",
                        lambda group: ["jax_cuda12_plugin"] if group == "jax_plugins" else [])
    assert allocator.cpu_only() is False
    monkeypatch.setattr(allocator.importlib.metadata, "entry_points", lambda group: [])
    monkeypatch.setattr(allocator.importlib.util, "find_spec", lambda name: None)
    assert allocator.cpu_only() is True
