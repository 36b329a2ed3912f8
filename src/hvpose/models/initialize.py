"""A Flax model's initial variables, computed as one compiled program instead of op by op.

`model.init(key, x)` called eagerly runs the forward pass one primitive at a time and draws every parameter with
its own `jax.random` call: each distinct shape is a separate XLA compilation, and the random-number programs
(threefry, the inverse error function of the truncated normal) are slow to compile at XLA:CPU's default LLVM
level, -O3. `initial_variables` traces `model.init` once under `jax.jit`, where the dead forward pass is removed,
and on a CPU compiles it at LLVM's -O1 (`tests/test_initialize.py` checks the values; `benchmarks/train_step.py`
times both ways). The values are those of the eager `model.init` with the same key: bit for bit, except that
LLVM's lower level rounds a few elements differently in their last bits (at most a few units in the last place).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

# LLVM optimisation level for the initialisation program on a CPU: -O1 compiles the random-number code several
# times faster than the default -O3, and the program runs once per training run.
CPU_OPTIMIZATION_LEVEL: int = 1


def initial_variables(model: nn.Module, key: jax.Array, *example_inputs: Any, **kwargs: Any) -> dict[str, Any]:
    """`model.init(key, *example_inputs, **kwargs)`, compiled as one program (see the module docstring).

    Under a trace (`jax.eval_shape`, `jax.jit`) it is `model.init` itself, since there is nothing to compile then.
    """
    init = jax.jit(lambda key, *inputs: model.init(key, *inputs, **kwargs))
    if any(isinstance(value, jax.core.Tracer) for value in jax.tree.leaves((key, example_inputs))):
        return init(key, *example_inputs)
    lowered = init.lower(key, *example_inputs)
    options = {"xla_backend_optimization_level": CPU_OPTIMIZATION_LEVEL} if jax.default_backend() == "cpu" else {}
    return lowered.compile(compiler_options=options)(key, *example_inputs)


__all__ = ["CPU_OPTIMIZATION_LEVEL", "initial_variables"]
