"""Benchmark: the jitted, sharded train step (forward, loss, backward, AdamW update) of real configs: throughput,
FLOP/s and MFU from XLA's cost analysis, and the share of the step outside the backbone.

    python benchmarks/train_step.py [--config configs/demo.py] [--batches 16] [--dtypes float32,bfloat16]
        [--paper] [--paper_batches 1,2] [--repeats 5] [--sections init,loss_grid,head_and_loss,max_pool,widths,scaling]
        [--out benchmarks/results/train_step-<machine>.json]

Sections (times are the best of `--repeats` steps after compilation, on a fixed random batch already on the
devices):
  * `loss_grid`: `loss.map_stride` (the loss on every crop pixel, the paper's, against every 2nd/4th) against the
    config as it is (the baseline, same run).
  * `head_and_loss`: the path from the head's feature-grid maps to the loss, forward and backward (upsampling to
    the loss grid, split into heatmaps and (x, y) offsets, targets, cross-entropy and Huber terms), as hvpose runs
    it (`models.keypoint_net.upsample_outputs`, `targets.keypoint_loss`) against the previous formulation (the
    baseline, same run: the 3K maps upsampled and then split, with the (x, y) pairs stacked at loss resolution,
    and optax's sigmoid cross-entropy), at the config's crop, strides, loss settings and batch; equal losses.
  * `max_pool`: the whole train step of the config and of `configs/detector_demo.py` with the ResNet stem's max-pool
    as `flax.linen.max_pool` (the baseline, same run: XLA differentiates its reduce-window through a variadic
    reduce-window with index arrays and a scatter), as `hvpose.ops.pooling.max_pool` (strided slices, selects
    backward) and as that without its optimization barrier (XLA then recomputes the maxima's positions inside the
    backward pass's fusion), interleaved (median of at least 10 paired ratios); one step from the same state gives
    the same loss and gradient norm (`same_first_step`).
  * `widths`: the whole train step of the config and of `configs/detector_demo.py` with their
    `model.width_multipliers` (the demos' conv5_x at half width) against the standard (1, 2, 4, 8) (the baseline,
    same run), interleaved (median of at least 10 paired ratios).
  * `scaling`: for each batch size and compute dtype, the whole step beside the bare backbone's step (the same
    ResNet, forward + backward of a stand-in loss on block4, and the same optimizer's update of the backbone's
    parameters) on the same crops. `outside_backbone` = 1 - backbone time / step time: the heads, the upsampling
    of the maps, the targets, the loss and the head's update. FLOPs per step come from XLA's cost analysis of
    the compiled step (per device; the step is data-parallel, so every device runs the same program on its
    share). MFU divides the achieved FLOP/s per device by the device's peak: the vendor's dense peak for the
    dtype on known accelerators (float32 on GPU means TF32 tensor cores, JAX's default precision there), and
    on a CPU the rate of a 2048x2048 matmul measured in the same run (a practical peak, not a spec).
  `--paper` adds `configs/coco.py` itself (ResNet-101 at output stride 8, 353x257): the step the paper's
  training repeats half a million times (about 7 s per crop on a 2-core CPU).
  * `init`: the model's initial variables (`train.init_state`'s first step) for the config and for
    `configs/detector_demo.py`, each way in a fresh process (start-up and every compilation included):
    `hvpose.models.initialize.initial_variables` (one program, LLVM -O1 on a CPU) against the eager `model.init`
    (the baseline, same run; one compilation per primitive and parameter shape).
  * `peer` (with `--peer`, and `--paper`): the same network and loss in PyTorch (`train_step_torch.py`:
    torchvision ResNet-101 dilated to output stride 8, channels-last, bfloat16 autocast, `torch.compile`) at the
    paper batches and dtypes, run in a subprocess before JAX touches the device (both would claim its memory), and
    `hvpose_time_vs_peer` for each pair. Needs torch and torchvision installed beside hvpose.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import subprocess
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from hvpose import sharding
from hvpose.allocator import reuse_freed_memory
from hvpose.data.crops import check_crop_size
from hvpose.models.keypoint_net import DTYPES, KeypointNet, split_head, upsample_outputs
from hvpose.models.preprocess import preprocess
from hvpose.models.resnet import ResNet
from hvpose.ops.upsample import upsample_to_map_stride
from hvpose.targets import huber, keypoint_loss
from hvpose.train import init_state, jit_train_step, learning_rate_schedule, make_optimizer
from machine import compile_with_flops, machine_info, peak_flops, write_results

REPO = pathlib.Path(__file__).resolve().parents[1]

def load_config(path: pathlib.Path) -> Any:
    spec = importlib.util.spec_from_file_location("benchmark_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def make_setup(config: Any, batch_size: int) -> dict[str, Any]:
    """Model, optimizer, mesh, initial state and a random batch (uint8 crops and keypoints) on the devices."""
    crop = check_crop_size(**config.crop, output_stride=config.model.output_stride)
    model = KeypointNet(num_keypoints=17, map_stride=config.loss.map_stride, **config.model)
    optimizer = make_optimizer(config.train)
    mesh = sharding.make_mesh()
    rng = np.random.default_rng(0)
    keypoints = np.concatenate([rng.uniform(0, [crop[1], crop[0]], (batch_size, 17, 2)),
                                rng.integers(0, 3, (batch_size, 17, 1))], -1).astype(np.float32)
    with jax.set_mesh(mesh):
        state = jax.device_put(init_state(model, optimizer, crop, 0), sharding.replicated(mesh))
        batch = jax.device_put({"image": rng.integers(0, 256, (batch_size, *crop, 3), np.uint8),
                                "keypoints": keypoints}, sharding.batch_sharded(mesh))
    return {"config": config, "model": model, "optimizer": optimizer, "mesh": mesh, "state": state, "batch": batch}


def timed_steps(step: Any, carry: tuple, inputs: Any, repeats: int) -> float:
    """Best time of `repeats` calls of step(*carry, inputs) -> (*carry, metrics), threading the donated carry."""
    carry = step(*carry, inputs)[:-1]  # warm up
    jax.block_until_ready(carry)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        *carry, metrics = step(*carry, inputs)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return min(times)


def full_step(setup: dict[str, Any], repeats: int) -> tuple[float, float | None]:
    """(seconds, FLOPs) of the config's train step."""
    config, mesh = setup["config"], setup["mesh"]
    with jax.set_mesh(mesh):
        step = jit_train_step(setup["model"], setup["optimizer"], learning_rate_schedule(config.train),
                              config.loss.to_dict(), mesh, setup["state"])
        compiled, flops = compile_with_flops(step, setup["state"], setup["batch"])
        state = jax.tree.map(jnp.copy, setup["state"])  # the step donates its state
        seconds = timed_steps(compiled, (state,), setup["batch"], repeats)
    return seconds, flops


def backbone_step(setup: dict[str, Any], repeats: int) -> tuple[float, float | None]:
    """(seconds, FLOPs) of the bare backbone's step: forward + backward of mean(block4^2) in training mode and
    the optimizer's update of the backbone's parameters, on the same crops."""
    model, optimizer, mesh = setup["model"], setup["optimizer"], setup["mesh"]
    backbone = ResNet(depth=model.depth, output_stride=model.output_stride, stride_on=model.stride_on,
                      conv_bias=model.conv_bias, bn_frozen=model.bn_frozen, bn_momentum=model.bn_momentum,
                      bn_epsilon=model.bn_epsilon, base_width=model.base_width,
                      width_multipliers=model.width_multipliers, dtype=DTYPES[model.dtype])

    def step(params: Any, batch_stats: Any, opt_state: Any, crops: jax.Array) -> tuple:
        def loss(p: Any) -> tuple[jax.Array, Any]:
            features, updates = backbone.apply({"params": p, "batch_stats": batch_stats},
                                               preprocess(crops, model.preprocess), train=True,
                                               mutable=["batch_stats"])
            return jnp.mean(jnp.square(features["block4"].astype(jnp.float32))), updates["batch_stats"]

        (value, batch_stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, value

    state = setup["state"]
    with jax.set_mesh(mesh):
        params = jax.tree.map(jnp.copy, state.params["backbone"])
        batch_stats = jax.tree.map(jnp.copy, state.batch_stats["backbone"])
        opt_state = jax.device_put(optimizer.init(params), sharding.replicated(mesh))
        replicated = sharding.replicated(mesh)
        jitted = jax.jit(step, in_shardings=(replicated, replicated, replicated, sharding.batch_sharded(mesh)),
                         out_shardings=replicated, donate_argnums=(0, 1, 2))
        crops = setup["batch"]["image"]
        compiled, flops = compile_with_flops(jitted, params, batch_stats, opt_state, crops)
        seconds = timed_steps(compiled, (params, batch_stats, opt_state), crops, repeats)
    return seconds, flops


def scaling_rows(config_path: pathlib.Path, batches: list[int], dtypes: list[str], repeats: int,
                 peaks: dict[str, tuple[float | None, str]]) -> list[dict[str, Any]]:
    rows = []
    devices = jax.device_count()
    for dtype in dtypes:
        peak, peak_source = peaks[dtype]
        for batch in batches:
            config = load_config(config_path)
            config.model.dtype = dtype
            config.train.batch_size = batch
            setup = make_setup(config, batch)
            seconds, flops = full_step(setup, repeats)
            backbone_seconds, backbone_flops = backbone_step(setup, repeats)
            achieved = flops / seconds if flops else None
            rows.append({
                "section": "scaling", "config": config_path.name, "dtype": dtype, "batch": batch,
                "seconds": seconds, "crops_per_second": batch / seconds, "flops_per_step_per_device": flops,
                "gflops_per_crop": flops * devices / batch / 1e9 if flops else None,
                "achieved_flops_per_second_per_device": achieved,
                "peak_flops_per_second_per_device": peak, "peak_source": peak_source,
                "mfu": achieved / peak if achieved and peak else None,
                "backbone_seconds": backbone_seconds, "backbone_flops_per_step_per_device": backbone_flops,
                "outside_backbone": 1.0 - backbone_seconds / seconds,
                "outside_backbone_flops": 1.0 - backbone_flops / flops if flops and backbone_flops else None})
            print(f"  {config_path.name} {dtype} batch {batch}: {seconds:.3f} s, backbone {backbone_seconds:.3f} s",
                  flush=True)
    return rows


def loss_grid_rows(config_path: pathlib.Path, batch: int, repeats: int) -> list[dict[str, Any]]:
    base = load_config(config_path)
    variants: list[tuple[str, int]] = [("as configured", base.loss.map_stride)]
    variants += [(f"loss.map_stride={s}", s) for s in (1, 2, 4)
                 if s != base.loss.map_stride and base.model.output_stride % s == 0]
    rows, baseline = [], None
    for label, stride in variants:
        config = load_config(config_path)
        config.loss.map_stride = stride
        config.train.batch_size = batch
        seconds, _ = full_step(make_setup(config, batch), repeats)
        baseline = baseline or seconds
        rows.append({"section": "loss_grid", "config": config_path.name, "variant": label, "batch": batch,
                     "seconds": seconds, "crops_per_second": batch / seconds, "time_vs_baseline": seconds / baseline})
    return rows


def previous_head_and_loss(maps: jax.Array, keypoints: jax.Array, crop: tuple[int, int], output_stride: int,
                           map_stride: int, radius: float, offset_scale: float | None, heatmap_weight: float = 4.0,
                           offset_weight: float = 1.0, huber_delta: float = 1.0, **_: Any) -> jax.Array:
    """The head-to-loss path as hvpose ran it before `upsample_outputs` (the baseline of `head_and_loss`)."""
    k = keypoints.shape[1]
    outputs = split_head(upsample_to_map_stride(maps, crop, output_stride, map_stride), k)
    size = outputs["heatmap_logits"].shape[1:3]
    ys = jnp.arange(size[0], dtype=jnp.float32)[:, None] * map_stride
    xs = jnp.arange(size[1], dtype=jnp.float32)[None, :] * map_stride
    dx, dy = jnp.broadcast_arrays(keypoints[:, None, None, :, 0] - xs[None, :, :, None],
                                  keypoints[:, None, None, :, 1] - ys[None, :, :, None])
    disk = (keypoints[:, None, None, :, 2] > 0) & (dx * dx + dy * dy <= radius * radius)
    heatmap_loss = jnp.mean(optax.sigmoid_binary_cross_entropy(outputs["heatmap_logits"], disk.astype(jnp.float32)))
    scale = radius if offset_scale is None else offset_scale
    error = (outputs["offsets"] - jnp.stack([dx, dy], axis=-1)) / scale
    per_pixel = huber(jnp.sum(error * error, axis=-1), huber_delta / scale)
    offset_loss = jnp.sum(jnp.where(disk, per_pixel, 0.0)) / jnp.maximum(jnp.sum(disk), 1)
    return heatmap_weight * heatmap_loss + offset_weight * offset_loss


def head_and_loss_rows(config_path: pathlib.Path, batch: int, repeats: int) -> list[dict[str, Any]]:
    config = load_config(config_path)
    crop = check_crop_size(**config.crop, output_stride=config.model.output_stride)
    stride, map_stride = config.model.output_stride, config.loss.map_stride
    settings = {key: value for key, value in config.loss.to_dict().items()
                if key not in ("map_stride", "aux_weight", "unlabelled")}
    rng = np.random.default_rng(0)
    grid = ((crop[0] - 1) // stride + 1, (crop[1] - 1) // stride + 1)
    maps = jnp.asarray(rng.normal(0, 3, (batch, *grid, 3 * 17)), jnp.float32)
    keypoints = jnp.asarray(np.concatenate([rng.uniform(0, [crop[1], crop[0]], (batch, 17, 2)),
                                            rng.integers(0, 3, (batch, 17, 1))], -1), jnp.float32)

    def current(maps: jax.Array) -> jax.Array:
        parts = split_head(maps, 17)
        outputs = upsample_outputs(parts["heatmap_logits"], parts["offsets"], crop, stride, map_stride)
        return keypoint_loss(outputs["heatmap_logits"], outputs["offsets"], keypoints, map_stride=map_stride,
                             unlabelled="negative", **settings)["loss"]

    def previous(maps: jax.Array) -> jax.Array:
        return previous_head_and_loss(maps, keypoints, crop, stride, map_stride, **settings)

    forms = {"previous (baseline)": jax.jit(jax.value_and_grad(previous)),
             "hvpose": jax.jit(jax.value_and_grad(current))}
    losses = {name: float(jax.block_until_ready(form(maps))[0]) for name, form in forms.items()}
    times: dict[str, list[float]] = {name: [] for name in forms}
    for _ in range(max(repeats, 10)):  # interleaved, so drift hits both alike
        for name, form in forms.items():
            start = time.perf_counter()
            jax.block_until_ready(form(maps))
            times[name].append(time.perf_counter() - start)
    baseline = min(times["previous (baseline)"])
    return [{"section": "head_and_loss", "config": config_path.name, "form": name, "batch": batch,
             "loss_grid": f"{(crop[0] - 1) // map_stride + 1}x{(crop[1] - 1) // map_stride + 1}",
             "seconds": min(times[name]), "time_vs_baseline": min(times[name]) / baseline, "loss": losses[name],
             "same_loss": bool(np.isclose(losses[name], losses["previous (baseline)"], rtol=1e-5))}
            for name in forms]


def task_setup(config: Any, batch: int) -> tuple[Any, Any, Any, Any, Any, Any]:
    """(model, optimizer, objective, mesh, state, inputs) of a keypoint or detector config's train step, on a fixed
    random batch already on the devices: `make_setup` for keypoints, `detector.random_batch` for the detector."""
    if config.get("task", "keypoints") != "detection":
        setup = make_setup(config, batch)
        return (setup["model"], setup["optimizer"], config.loss.to_dict(), setup["mesh"], setup["state"],
                setup["batch"])
    import functools

    import detector as detector_benchmark

    from hvpose.detector import build_model, detector_objective

    canvas = tuple(config.data.canvas_size)
    batch_np = detector_benchmark.random_batch(np.random.default_rng(0), batch, canvas, config.data.max_boxes)
    optimizer = make_optimizer(config.train)
    objective = functools.partial(detector_objective, loss_settings=config.loss.to_dict(), seed=0)
    model = build_model(config)
    mesh = sharding.make_mesh()
    with jax.set_mesh(mesh):
        inputs = jax.device_put(batch_np, sharding.batch_sharded(mesh))
        state = jax.device_put(init_state(model, optimizer, canvas, 0), sharding.replicated(mesh))
    return model, optimizer, objective, mesh, state, inputs


def max_pool_rows(config_paths: list[pathlib.Path], batch: int, repeats: int) -> list[dict[str, Any]]:
    """Section `max_pool`: each config's whole train step with the ResNet stem's 3x3/2 max-pool as
    `flax.linen.max_pool` (the baseline: a reduce-window, differentiated through a variadic reduce-window with index
    arrays), as `hvpose.ops.pooling.max_pool` (strided slices; selects backward) and as the same without its
    optimization barrier (so XLA may fuse the positions of the maxima into the backward pass and recompute them
    there, as it did), interleaved; one step from the same state gives the same loss and gradient norm."""
    import flax.linen as nn

    from hvpose.models import resnet
    from hvpose.ops import pooling

    rows = []
    for path in config_paths:
        config = load_config(path)
        config.train.batch_size = batch
        model, optimizer, objective, mesh, state, inputs = task_setup(config, batch)
        forms = {}

        def without_barrier(x, window, strides, padding):  # pooling._max_pool_forward before its barrier
            result, first = pooling._forward(x, window, strides, padding)
            return result, (first, x.shape)

        try:
            for name, pool, forward in (
                    ("flax.linen.max_pool (baseline)", nn.max_pool, pooling._max_pool_forward),
                    ("hvpose.ops.pooling.max_pool", pooling.max_pool, pooling._max_pool_forward),
                    ("hvpose.ops.pooling.max_pool without its barrier", pooling.max_pool, without_barrier)):
                resnet.max_pool = pool  # read when the step is traced
                pooling._max_pool.defvjp(forward, pooling._max_pool_backward)
                with jax.set_mesh(mesh):
                    step = jit_train_step(model, optimizer, learning_rate_schedule(config.train), objective, mesh,
                                          state).lower(state, inputs).compile()
                    carry, metrics = step(jax.tree.map(jnp.copy, state), inputs)
                    forms[name] = {"step": step, "state": carry, "times": [],
                                   "loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"])}
        finally:
            resnet.max_pool = pooling.max_pool
            pooling._max_pool.defvjp(pooling._max_pool_forward, pooling._max_pool_backward)
        with jax.set_mesh(mesh):
            for _ in range(max(repeats, 10)):  # interleaved, so drift hits all alike
                for form in forms.values():
                    start = time.perf_counter()
                    form["state"], metrics = form["step"](form["state"], inputs)
                    jax.block_until_ready(metrics)
                    form["times"].append(time.perf_counter() - start)
        base = forms["flax.linen.max_pool (baseline)"]
        for name, form in forms.items():
            ratios = np.array(form["times"]) / np.array(base["times"])
            rows.append({"section": "max_pool", "config": path.name, "form": name, "batch": batch,
                         "seconds": float(np.median(form["times"])), "time_vs_baseline": float(np.median(ratios)),
                         "loss": form["loss"], "grad_norm": form["grad_norm"],
                         "same_first_step": bool(np.isclose(form["loss"], base["loss"], rtol=1e-6)
                                                 and np.isclose(form["grad_norm"], base["grad_norm"], rtol=1e-4))})
        print(f"  max_pool {path.name}: {rows[-2]['time_vs_baseline']:.3f}x (without the barrier "
              f"{rows[-1]['time_vs_baseline']:.3f}x)", file=sys.stderr, flush=True)
    return rows


def widths_rows(config_paths: list[pathlib.Path], batch: int, repeats: int) -> list[dict[str, Any]]:
    """Section `widths`: each config's whole train step with its `model.width_multipliers` against the standard
    (1, 2, 4, 8) (the baseline, same run), interleaved (median of at least 10 paired ratios)."""
    rows = []
    for path in config_paths:
        forms = {}
        for name, multipliers in (("standard (1, 2, 4, 8) (baseline)", ()),
                                  ("as configured", tuple(load_config(path).model.width_multipliers))):
            config = load_config(path)
            config.train.batch_size = batch
            config.model.width_multipliers = multipliers
            model, optimizer, objective, mesh, state, inputs = task_setup(config, batch)
            with jax.set_mesh(mesh):
                step = jit_train_step(model, optimizer, learning_rate_schedule(config.train), objective, mesh,
                                      state).lower(state, inputs).compile()
                carry, _ = step(jax.tree.map(jnp.copy, state), inputs)
            forms[name] = {"step": step, "state": carry, "mesh": mesh, "inputs": inputs, "times": [],
                           "multipliers": multipliers or (1, 2, 4, 8)}
        for _ in range(max(repeats, 10)):  # interleaved, so drift hits both alike
            for form in forms.values():
                with jax.set_mesh(form["mesh"]):
                    start = time.perf_counter()
                    form["state"], metrics = form["step"](form["state"], form["inputs"])
                    jax.block_until_ready(metrics)
                    form["times"].append(time.perf_counter() - start)
        base = forms["standard (1, 2, 4, 8) (baseline)"]
        for name, form in forms.items():
            rows.append({"section": "widths", "config": path.name, "form": name,
                         "width_multipliers": list(form["multipliers"]), "batch": batch,
                         "seconds": float(np.median(form["times"])),
                         "time_vs_baseline": float(np.median(np.array(form["times"]) / np.array(base["times"])))})
        print(f"  widths {path.name}: {rows[-1]['width_multipliers']} {rows[-1]['time_vs_baseline']:.3f}x",
              file=sys.stderr, flush=True)
    return rows


def peer_rows(batches: list[int], dtypes: list[str], repeats: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The PyTorch peer's rows (`train_step_torch.py` in a subprocess) and what it ran on."""
    command = [sys.executable, str(pathlib.Path(__file__).parent / "train_step_torch.py"),
               "--batches", ",".join(map(str, batches)), "--dtypes", ",".join(dtypes), "--repeats", str(repeats)]
    print("running the PyTorch peer:", " ".join(command), flush=True)
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    rows = [{"section": "peer", "config": "coco.py", **row} for row in report.pop("rows")]
    return rows, report


INIT_PROBE = """
import sys, time
import jax, jax.numpy as jnp
sys.path.insert(0, {benchmarks!r})
from train_step import load_config
from hvpose.models.initialize import initial_variables
config = load_config(__import__("pathlib").Path({config!r}))
if config.get("task", "keypoints") == "detection":
    from hvpose.detector import build_model
    model, size = build_model(config), tuple(config.data.canvas_size)
else:
    from hvpose.data.crops import check_crop_size
    from hvpose.models.keypoint_net import KeypointNet
    model = KeypointNet(num_keypoints=17, map_stride=config.loss.map_stride, **config.model)
    size = check_crop_size(**config.crop, output_stride=config.model.output_stride)
key, example = jax.random.key(0), jnp.zeros((1, *size, 3), jnp.uint8)
start = time.perf_counter()
variables = model.init(key, example) if {way!r} == "eager" else initial_variables(model, key, example)
jax.block_until_ready(variables)
print(time.perf_counter() - start)
"""


def init_rows(config_paths: list[pathlib.Path]) -> list[dict[str, Any]]:
    """Seconds to the initial variables, eager `model.init` against `initial_variables`, each in a new process."""
    rows = []
    for path in config_paths:
        seconds = {}
        for way in ("eager", "initial_variables"):
            code = INIT_PROBE.format(benchmarks=str(pathlib.Path(__file__).parent), config=str(path), way=way)
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            seconds[way] = float(done.stdout.strip().splitlines()[-1])
            print(f"init {path.name} {way}: {seconds[way]:.1f} s", file=sys.stderr)
        rows.append({"section": "init", "config": path.name, "eager_seconds": seconds["eager"],
                     "seconds": seconds["initial_variables"],
                     "time_vs_baseline": seconds["initial_variables"] / seconds["eager"]})
    return rows


def integers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


SECTIONS = ("init", "loss_grid", "head_and_loss", "max_pool", "widths", "scaling")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=pathlib.Path, default=REPO / "configs" / "demo.py")
    parser.add_argument("--batches", type=integers, default=[16],
                        help="global batch sizes for the scaling section (divisible by the device count)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--paper", action="store_true", help="also time configs/coco.py (slow on a CPU)")
    parser.add_argument("--paper_batches", type=integers, default=[1, 2])
    parser.add_argument("--peer", action="store_true",
                        help="with --paper: also time the PyTorch peer (needs torch and torchvision)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, of {','.join(SECTIONS)} (peak always runs)")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="JSON results file (default: benchmarks/results/train_step-<machine>.json, or "
                             "train_step-<sections>-<machine>.json for some sections only)")
    args = parser.parse_args()
    sections = [name for name in args.sections.split(",") if name]
    if unknown := sorted(set(sections) - set(SECTIONS)):
        parser.error(f"unknown sections {unknown} (known: {', '.join(SECTIONS)})")
    malloc_reused = reuse_freed_memory()  # before JAX runs, as python -m hvpose.main does
    dtypes = [d for d in args.dtypes.split(",") if d]
    peer, peer_report = [], None
    if args.peer:
        if not args.paper:
            parser.error("--peer compares with the paper's config: add --paper")
        peer, peer_report = peer_rows(args.paper_batches, dtypes, max(2, args.repeats // 2))
    machine = machine_info()
    some = "" if set(sections) == set(SECTIONS) else "-" + "-".join(sections)
    out = args.out or pathlib.Path(__file__).parent / "results" / f"train_step{some}-{machine['name']}.json"
    started = time.perf_counter()
    peaks = {dtype: peak_flops(dtype, args.repeats) for dtype in dtypes}
    rows: list[dict[str, Any]] = [{"section": "peak", "dtype": d, "flops_per_second": p, "source": s}
                                  for d, (p, s) in peaks.items()]
    if "init" in sections:
        rows += init_rows([args.config, REPO / "configs" / "detector_demo.py"])
    if "loss_grid" in sections:
        rows += loss_grid_rows(args.config, args.batches[0], args.repeats)
    if "head_and_loss" in sections:
        rows += head_and_loss_rows(args.config, args.batches[0], args.repeats)
    if "max_pool" in sections:
        rows += max_pool_rows([args.config, REPO / "configs" / "detector_demo.py"], args.batches[0], args.repeats)
    if "widths" in sections:
        rows += widths_rows([args.config, REPO / "configs" / "detector_demo.py"], args.batches[0], args.repeats)
    if "scaling" in sections:
        rows += scaling_rows(args.config, args.batches, dtypes, args.repeats, peaks)
    if args.paper:
        rows += scaling_rows(REPO / "configs" / "coco.py", args.paper_batches, dtypes, max(2, args.repeats // 2),
                             peaks)
    for row in peer:
        ours = [r for r in rows if r["section"] == "scaling" and r["config"] == "coco.py"
                and r["dtype"] == row["dtype"] and r["batch"] == row["batch"]]
        row["hvpose_time_vs_peer"] = ours[0]["seconds"] / row["seconds"] if ours else None
        row["peer_device"] = peer_report
    rows += peer

    print(f"\nTrain step ({machine['cpu']}, {machine['cores']} cores, {machine['device_count']} "
          f"{machine['jax_backend']} device(s) {machine['accelerator'] or ''}, jax {jax.__version__}), best of "
          f"{args.repeats}")
    for dtype, (peak, source) in peaks.items():
        print(f"peak {dtype}: {peak / 1e12 if peak else float('nan'):.3f} TFLOP/s per device ({source})")
    print(f"\n{'initial variables':30} {'eager model.init s':>18} {'initial_variables s':>19} {'vs base':>8}")
    for row in (r for r in rows if r["section"] == "init"):
        print(f"{row['config']:30} {row['eager_seconds']:18.1f} {row['seconds']:19.1f} {row['time_vs_baseline']:7.2f}x")
    print(f"\n{'config':10} {'variant':30} {'batch':>5} {'seconds':>8} {'crops/s':>8} {'vs base':>8}")
    for row in (r for r in rows if r["section"] == "loss_grid"):
        print(f"{row['config']:10} {row['variant']:30} {row['batch']:5d} {row['seconds']:8.3f} "
              f"{row['crops_per_second']:8.1f} {row['time_vs_baseline']:7.2f}x")
    print(f"\n{'head to loss, fwd+bwd':30} {'loss grid':>9} {'batch':>5} {'ms':>8} {'vs base':>8} {'same loss':>9}")
    for row in (r for r in rows if r["section"] == "head_and_loss"):
        print(f"{row['form']:30} {row['loss_grid']:>9} {row['batch']:5d} {row['seconds'] * 1e3:8.2f} "
              f"{row['time_vs_baseline']:7.2f}x {str(row['same_loss']):>9}")
    print(f"\n{'stem max-pool, whole step':48} {'config':18} {'batch':>5} {'ms':>8} {'vs base':>8} {'same step':>9}")
    for row in (r for r in rows if r["section"] == "max_pool"):
        print(f"{row['form']:48} {row['config']:18} {row['batch']:5d} {row['seconds'] * 1e3:8.1f} "
              f"{row['time_vs_baseline']:7.2f}x {str(row['same_first_step']):>9}")
    print(f"\n{'stage widths, whole step':34} {'config':18} {'batch':>5} {'ms':>8} {'vs base':>8}")
    for row in (r for r in rows if r["section"] == "widths"):
        print(f"{str(tuple(row['width_multipliers'])):34} {row['config']:18} {row['batch']:5d} "
              f"{row['seconds'] * 1e3:8.1f} {row['time_vs_baseline']:7.2f}x")
    print(f"\n{'config':10} {'dtype':9} {'batch':>5} {'seconds':>8} {'crops/s':>8} {'GFLOP/crop':>10} {'TFLOP/s':>8} "
          f"{'MFU':>6} {'backbone s':>10} {'outside bb':>10} {'(FLOPs)':>8}")
    for row in (r for r in rows if r["section"] == "scaling"):
        tflops = row["achieved_flops_per_second_per_device"]
        print(f"{row['config']:10} {row['dtype']:9} {row['batch']:5d} {row['seconds']:8.3f} "
              f"{row['crops_per_second']:8.2f} {row['gflops_per_crop'] or float('nan'):10.1f} "
              f"{tflops / 1e12 if tflops else float('nan'):8.3f} {row['mfu'] or float('nan'):6.1%} "
              f"{row['backbone_seconds']:10.3f} {row['outside_backbone']:10.1%} "
              f"{row['outside_backbone_flops'] or float('nan'):8.1%}")
    for row in peer:
        ratio = row["hvpose_time_vs_peer"]
        print(f"PyTorch peer {row['dtype']} batch {row['batch']}: {row['seconds']:.3f} s "
              f"({row['crops_per_second']:.2f} crops/s); hvpose takes {ratio:.2f}x its time" if ratio else "")
    print(f"({time.perf_counter() - started:.0f} s)")
    write_results(out, "train_step", vars(args) | {"malloc_reused": malloc_reused}, machine, rows)


if __name__ == "__main__":
    main()
