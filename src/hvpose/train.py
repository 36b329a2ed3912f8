"""Training: the train state, the pure train step, and the loop (checkpoints, metrics, preemption, evaluation).

The step is one `jax.jit` over a 1-D data mesh spanning every device of every process: parameters and optimizer
state replicated, the batch sharded along its leading axis. Under jit the BatchNorm statistics of a sharded batch
are computed over the global batch (XLA inserts the cross-device reductions), so 1 and N devices train alike.
The state is donated, so parameters are updated in place.

Resumption is exact: the state (step, parameters, optimizer, BatchNorm statistics) and the grain iterator's
position are checkpointed together; the step has no randomness of its own (augmentation randomness is grain's,
seeded per element), so running the same command again continues with the same batches and the same updates.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from etils import epath

from hvpose import checkpoints, sharding
from hvpose.data.augment import Augmentation
from hvpose.data.crops import check_crop_size
from hvpose.data.pipeline import close_loader, data_read_options, train_loader
from hvpose.data.splits import prepare_split
from hvpose.errors import ConfigError, NonFiniteLossError, configured
from hvpose.metrics import MetricWriter
from hvpose.models.initialize import initial_variables
from hvpose.models.keypoint_net import KeypointNet
from hvpose.models.resnet import frozen_parameters
from hvpose.paths import resolve_workdir
from hvpose.pretrained.families import FIELDS as BACKBONE_FIELDS
from hvpose.pretrained.families import check_backbone_matches
from hvpose.targets import check_loss_settings, total_loss

log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: updates applied so far
    params: Any
    batch_stats: Any
    opt_state: Any
    nonfinite_step: jax.Array  # int32: first step whose loss or gradient was NaN/Inf (-1: none); that update is skipped


def learning_rate_schedule(t: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warm-up to the peak (scaled by batch / 64), then 10x step decays at the configured fractions of
    steps (`config.train.schedule = "step"`, the paper's kind) or a cosine decay to zero (`"cosine"`).

    `t` is `config.train`.
    """
    peak = t.learning_rate * t.batch_size / 64
    warmup = optax.linear_schedule(peak * 1e-3, peak, max(t.warmup_steps, 1))
    schedule = t.schedule
    if schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, max(t.steps - t.warmup_steps, 1))
    elif schedule == "step":
        boundaries = {int(fraction * t.steps): 0.1 for fraction in t.decay_boundaries
                      if int(fraction * t.steps) > 0}
        decay = optax.piecewise_constant_schedule(peak, {k - t.warmup_steps: v for k, v in boundaries.items()
                                                         if k > t.warmup_steps})
    else:
        raise ConfigError(f"config.train.schedule: {schedule!r} is not 'step' or 'cosine'")
    return optax.join_schedules([warmup, decay], [t.warmup_steps])


def _decay_mask(params: Any) -> Any:
    """Weight decay on convolution kernels only (not biases, not BatchNorm scales)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)


def make_optimizer(t: ml_collections.ConfigDict, frozen_stages: int = 0) -> optax.GradientTransformation:
    """The optimizer of `config.train` (`t`): AdamW or Nesterov momentum SGD with decoupled weight decay on
    kernels, after global-norm gradient clipping when set. The backbone parts that `frozen_stages`
    (`config.model.frozen_stages`) freezes get no update at all, weight decay included, and no optimizer state."""
    schedule = learning_rate_schedule(t)
    if t.optimizer == "adamw":
        optimizer = optax.adamw(schedule, weight_decay=t.weight_decay, mask=_decay_mask)
    elif t.optimizer == "momentum":
        optimizer = optax.chain(optax.add_decayed_weights(t.weight_decay, _decay_mask),
                                optax.sgd(schedule, momentum=0.9, nesterov=True))
    else:
        raise ConfigError(f"config.train.optimizer: {t.optimizer!r} is not 'adamw' or 'momentum'")
    if t.grad_clip_norm:
        optimizer = optax.chain(optax.clip_by_global_norm(t.grad_clip_norm), optimizer)
    if frozen_stages:
        labels = lambda params: jax.tree.map(  # noqa: E731
            lambda frozen: "frozen" if frozen else "trained", frozen_parameters(params, frozen_stages))
        optimizer = optax.multi_transform({"trained": optimizer, "frozen": optax.set_to_zero()}, labels)
    return optimizer


def init_state(model: KeypointNet, optimizer: optax.GradientTransformation, crop_size: tuple[int, int], seed: int,
               backbone: str = "") -> TrainState:
    """Fresh state: random initialisation, with a pretrained backbone when `backbone` names a Keras Applications h5
    or a torchvision/timm `.safetensors` file (ImageNet), or an hvpose training workdir (the ResNet of its newest
    checkpoint; `hvpose.pretrained.families`); a detector's conv5_x head (`FasterRCNN(head="block4")`) gets the
    pretrained conv5_x too."""
    variables = initial_variables(model, jax.random.key(seed), jnp.zeros((1, *crop_size, 3), jnp.uint8))
    params, batch_stats = variables["params"], variables["batch_stats"]
    if backbone:
        from hvpose.pretrained.keras_resnet import check_matches

        family = check_backbone_matches(backbone, {name: getattr(model, name) for name in BACKBONE_FIELDS})
        loaded = family.read(backbone, model.depth)
        log.warning("hvpose: backbone initialised from %s (%s)", backbone, family.name)
        # A detector with the block4 head runs conv5_x per RoI, outside its backbone: those units load beside it.
        beside = {kind: {name: value for name, value in loaded[kind].items()
                         if name.startswith("block4_") and name not in tree["backbone"]}
                  for kind, tree in (("params", params), ("batch_stats", batch_stats))}
        inside = {kind: {name: value for name, value in loaded[kind].items() if name not in beside[kind]}
                  for kind in ("params", "batch_stats")}
        check_matches(inside, {"params": params["backbone"], "batch_stats": batch_stats["backbone"]}, backbone)
        check_matches(beside, {kind: {name: tree[name] for name in beside[kind] if name in tree}
                               for kind, tree in (("params", params), ("batch_stats", batch_stats))}, backbone)
        params = {**params, **jax.tree.map(jnp.asarray, beside["params"]),
                  "backbone": jax.tree.map(jnp.asarray, inside["params"])}
        batch_stats = {**batch_stats, **jax.tree.map(jnp.asarray, beside["batch_stats"]),
                       "backbone": jax.tree.map(jnp.asarray, inside["batch_stats"])}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=optimizer.init(params), nonfinite_step=jnp.full((), -1, jnp.int32))


# objective(model, params, batch_stats, batch, step) -> (loss, (loss terms, updated batch_stats)): what a task
# minimises; `step` seeds any sampling inside it, so the step stays a pure function of (state, batch).
Objective = Callable[[Any, Any, Any, dict[str, jax.Array], jax.Array], tuple[jax.Array, tuple[dict, Any]]]


def keypoint_objective(model: KeypointNet, params: Any, batch_stats: Any, batch: dict[str, jax.Array],
                       step: jax.Array, *, loss_settings: dict[str, Any]) -> tuple[jax.Array, tuple[dict, Any]]:
    """The keypoint network's loss on a batch of crops (`total_loss(**config.loss)`)."""
    del step
    outputs, updates = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"], train=True,
                                   mutable=["batch_stats"])
    terms = total_loss(outputs, batch["keypoints"], **loss_settings)
    return terms["loss"], (terms, updates["batch_stats"])


def _as_objective(objective: Objective | dict[str, Any]) -> Objective:
    """A task's objective; a dict is the keypoint network's loss settings (`config.loss`)."""
    if callable(objective):
        return objective
    return functools.partial(keypoint_objective, loss_settings=dict(objective))


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: Any,
               optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               objective: Objective | dict[str, Any]) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update on a (global) batch; pure. A non-finite loss skips the update.

    `objective` is the task's loss (`keypoint_objective`, `hvpose.detector.detector_objective`); a dict stands for
    the keypoint loss with those `total_loss` keywords (`config.loss`).
    """
    objective = _as_objective(objective)

    def loss_fn(params: Any) -> tuple[jax.Array, tuple[dict[str, jax.Array], Any]]:
        return objective(model, params, state.batch_stats, batch, state.step)

    (loss, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    new_state = TrainState(
        step=state.step + 1,
        params=keep(params, state.params),
        batch_stats=keep(batch_stats, state.batch_stats),
        opt_state=keep(opt_state, state.opt_state),
        nonfinite_step=jnp.where((state.nonfinite_step < 0) & ~finite, state.step, state.nonfinite_step),
    )
    metrics = {**terms, "grad_norm": grad_norm, "learning_rate": schedule(state.step)}
    return new_state, metrics


def jit_train_step(model: Any, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                   objective: Objective | dict[str, Any], mesh: jax.sharding.Mesh, state: TrainState
                   ) -> Callable[..., tuple[TrainState, dict]]:
    """The train step jitted with explicit shardings and the state donated."""
    step = jax.tree_util.Partial(train_step, model=model, optimizer=optimizer, schedule=schedule,
                                 objective=_as_objective(objective))
    state_sharding = jax.tree.map(lambda _: sharding.replicated(mesh), state)
    return jax.jit(step, in_shardings=(state_sharding, sharding.batch_sharded(mesh)),
                   out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=0)


@dataclasses.dataclass
class Task:
    """What the loop trains: the model, its input size, its objective, its batches and how progress is shown."""

    model: Any
    input_size: tuple[int, int]  # (height, width) of a crop or of the detector's canvas
    objective: Objective
    loader: Any  # grain.DataLoader
    unit: str  # what a batch element is, for the throughput: "crops" or "images"
    shown: tuple[str, ...]  # loss terms on the progress line


def keypoint_task(config: ml_collections.ConfigDict, prepared: Any) -> Task:
    """The keypoint network's training (`config.task = "keypoints"`)."""
    crop = configured(check_crop_size, config.crop, "crop", output_stride=config.model.output_stride)
    model = configured(KeypointNet, config.model, "model", num_keypoints=prepared.dataset.keypoint_set.num_keypoints,
                       map_stride=config.loss.map_stride)
    loss_settings = config.loss.to_dict()
    configured(check_loss_settings, loss_settings, "loss")
    loader = train_loader(prepared, config.train.batch_size, seed=config.seed,
                          augment=configured(Augmentation, config.data.augment, "data.augment"), crop_size=crop,
                          worker_count=config.data.worker_count, max_pixels=config.data.max_pixels,
                          read_options=data_read_options(config.data))
    return Task(model, crop, _as_objective(loss_settings), loader, "crops", ("heatmap_loss", "offset_loss"))


class _StopSignal:
    """Turns SIGTERM (preemption, scheduler time limits) into a flag the loop checks between steps."""

    def __init__(self) -> None:
        self.received = False
        self._previous = None

    def __enter__(self) -> _StopSignal:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. notebooks running in a thread): no handler
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        del signum, frame
        self.received = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _check_same_task(checkpoint_dir: str, task_name: str) -> None:
    """Refuses to resume a workdir whose checkpoints hold the other task's model (a detector's, or a keypoint
    network's), which would otherwise fail deep inside the restore."""
    try:
        saved, _ = checkpoints.read_config(checkpoint_dir)
    except (FileNotFoundError, KeyError, ValueError):
        return
    if saved.get("task", "keypoints") != task_name:
        raise ConfigError(f"{checkpoint_dir} holds a {saved.get('task', 'keypoints')} model; this config trains "
                          f"{task_name}: use another --workdir")


def _check_checkpoint_fits(manager: checkpoints.Checkpointer, step: int, abstract: TrainState, model: Any) -> None:
    """Refuses, in one line and before anything is read or written, a checkpoint whose parameters do not fit this
    model (a `make demo` re-run over an older demo's workdir, say), naming the settings it was trained with; orbax
    would fail deep inside the restore. Settings that leave the shapes alone (compute dtype, NMS sizes) resume."""
    misfit = checkpoints.variables_misfit(manager.directory, step, {"params": abstract.params,
                                                                    "batch_stats": abstract.batch_stats})
    if misfit:
        differences = checkpoints.model_differences(manager.directory, model) or "other model settings"
        raise ConfigError(f"{manager.directory}/{step} does not fit this model ({misfit}); it was trained with "
                          f"{differences}: use another --workdir (or remove this one), or give those settings")


def _check_same_worker_count(manager: checkpoints.Checkpointer, step: int, worker_count: int) -> None:
    """Refuses to resume with another `config.data.worker_count` than the checkpoint's: grain's position holds one
    place per worker (each batches its own elements), so it cannot continue the same batches with another count."""
    saved = manager.data_worker_count(step)
    if saved is not None and saved != worker_count:
        raise ConfigError(f"{manager.directory}/{step} saved the data position of config.data.worker_count={saved}, "
                          f"and grain resumes it only with the same count (given {worker_count}): add "
                          f"--config.data.worker_count={saved}, or use another --workdir")


def train(config: ml_collections.ConfigDict, workdir: str,
          evaluate_fn: Callable[[dict, int], dict] | None = None,
          stop_at: int | None = None) -> TrainState:
    """Trains (or resumes) according to `config`, writing checkpoints and metrics under `workdir`.

    `evaluate_fn(variables, step)` runs every `config.train.eval_every` steps and at the end, if given.
    `stop_at` ends this run after that step with a checkpoint, as a preemption would (for time-boxed jobs).
    """
    if config.init.posenet_tfjs:
        raise ConfigError("config.init.posenet_tfjs: PoseNet weights are for --mode=eval (hvpose does not train the "
                          "imported MobileNet)")
    if config.init.backbone:
        check_backbone_matches(config.init.backbone, config.model)
    elif config.model.get("frozen_stages", 0):
        raise ConfigError(f"config.model.frozen_stages={config.model.frozen_stages} would freeze randomly "
                          "initialised layers: give config.init.backbone, or set frozen_stages=0")
    data_read_options(config.data)  # refused before the data is prepared (a COCO conversion takes minutes)
    workdir = resolve_workdir(workdir)
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    # Each part from its own config section, once, in order: data, model and loss (the task), optimizer, devices,
    # checkpoints.
    prepared = prepare_split(config.data, "train", workdir, config.seed)
    keypoint_set = prepared.dataset.keypoint_set
    task_name = config.get("task", "keypoints")
    if task_name == "keypoints":
        task = keypoint_task(config, prepared)
    elif task_name == "detection":
        from hvpose import detector

        task = detector.training_task(config, prepared)
    else:
        raise ConfigError(f"config.task: {task_name!r} is not 'keypoints' or 'detection'")
    model, loader = task.model, task.loader
    optimizer = make_optimizer(config.train, config.model.get("frozen_stages", 0))
    schedule = learning_rate_schedule(config.train)
    mesh = sharding.make_mesh()
    if config.train.batch_size % jax.device_count():
        raise ConfigError(f"config.train.batch_size {config.train.batch_size} is not divisible by the "
                          f"{jax.device_count()} devices")
    data_iterator = iter(loader)

    with jax.set_mesh(mesh):
        abstract = jax.eval_shape(lambda: init_state(model, optimizer, task.input_size, config.seed))
        manager = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), config.train.checkpoint_every,
                                           config.train.keep_checkpoints)
        _check_same_task(manager.directory, task_name)
        latest = manager.latest_step()
        if latest is not None:
            _check_checkpoint_fits(manager, latest, abstract, model)
        # A finished run (re-run to evaluate, or after `make demo` changed its worker count) needs no data position.
        resumes_data = latest is not None and latest < config.train.steps
        if resumes_data:
            _check_same_worker_count(manager, latest, config.data.worker_count)
        manager.save_config(config, keypoint_set)
        state = manager.restore_latest(abstract, mesh, data_iterator if resumes_data else None)
        if state is None:
            state = jax.device_put(init_state(model, optimizer, task.input_size, config.seed, config.init.backbone),
                                   sharding.replicated(mesh))
        else:
            log.warning("hvpose: resumed from step %d in %s", int(state.step), manager.directory)
        step_fn = jit_train_step(model, optimizer, schedule, task.objective, mesh, state)
        writer = MetricWriter(workdir, total_steps=config.train.steps, unit=task.unit, shown=task.shown)
        step = int(state.step)
        window_start, window_crops = time.perf_counter(), 0
        try:
            with _StopSignal() as stop:
                while step < config.train.steps:
                    batch = sharding.global_batch(next(data_iterator), mesh)
                    state, metrics = step_fn(state, batch)
                    step += 1
                    window_crops += config.train.batch_size
                    if step % config.train.log_every == 0 or step == config.train.steps:
                        metrics = jax.device_get(metrics)
                        if int(state.nonfinite_step) >= 0 or not math.isfinite(float(metrics["loss"])):
                            raise NonFiniteLossError(
                                f"non-finite loss or gradient at step {max(int(state.nonfinite_step), step - 1)} "
                                f"(loss {float(metrics['loss'])}); lower config.train.learning_rate or check the "
                                "data")
                        elapsed = time.perf_counter() - window_start
                        writer.write(step, {k: float(v) for k, v in metrics.items()},
                                     items_per_second=window_crops / max(elapsed, 1e-9))
                        window_start, window_crops = time.perf_counter(), 0
                    # On several processes a local SIGTERM cannot decide alone (the save is collective and the
                    # others would run on): orbax's preemption sync tells every process at the same step.
                    local_stop = stop.received and jax.process_count() == 1
                    preempted = local_stop or manager.reached_preemption(step) or step == stop_at
                    manager.maybe_save(step, state, data_iterator, force=preempted or step == config.train.steps)
                    if preempted:
                        manager.wait()
                        log.warning("hvpose: stop requested; saved step %d, exiting (run the same command to "
                                    "resume)", step)
                        break
                    if evaluate_fn and config.train.eval_every and step % config.train.eval_every == 0 \
                            and step < config.train.steps:
                        evaluate_fn({"params": state.params, "batch_stats": state.batch_stats}, step)
        finally:
            manager.wait()
            manager.close()
            writer.close()
            batch = None  # JAX on CPU may alias the last batch's shared memory: let close_loader free it
            close_loader(data_iterator)  # workers stopped and shared memory released now, not at interpreter exit
            del data_iterator
    if evaluate_fn and step == config.train.steps:
        evaluate_fn({"params": state.params, "batch_stats": state.batch_stats}, step)
    return state


__all__ = ["Objective", "Task", "TrainState", "init_state", "jit_train_step", "keypoint_objective", "keypoint_task",
           "make_optimizer", "train", "train_step"]
