"""Checkpoints with orbax-checkpoint: the train state and the grain iterator position, saved together.

Saves are asynchronous (training continues while arrays are written), every `save_every` steps plus forced
saves at the end and on preemption; the newest `keep` are preserved. Restoring targets the current mesh with
explicit (replicated) shardings, so a run resumes on a different number of devices or hosts. The config is
written beside the checkpoints as `config.json`, so a checkpoint can be loaded without the original config file.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy, save_decision_policy

from hvpose import notices, sharding
from hvpose.errors import ConfigError
from hvpose.keypoints import KeypointSet
from hvpose.models.resnet import canonical_multipliers
from hvpose.paths import resolve_workdir

CONFIG_FILE = "config.json"


class Checkpointer:
    """CheckpointManager over items `state` (a pytree) and `data` (a grain DataLoaderIterator)."""

    def __init__(self, directory: str, save_every: int, keep: int):
        self.directory = directory
        options = ocp.CheckpointManagerOptions(
            # Every `save_every` steps (not also at the first step, as the default policy does); forced saves
            # at the end and on preemption come from the loop.
            save_decision_policy=save_decision_policy.FixedIntervalPolicy(max(int(save_every), 1)),
            preservation_policy=preservation_policy.LatestN(max(int(keep), 1)),
            enable_async_checkpointing=True,
        )
        self._manager = ocp.CheckpointManager(directory, options=options, item_names=("state", "data"))

    def save_config(self, config: ml_collections.ConfigDict, keypoint_set: KeypointSet) -> None:
        """Writes the config and the keypoint set as JSON beside the checkpoints (process 0 only)."""
        if jax.process_index() != 0:
            return
        directory = epath.Path(self.directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload = {"config": json.loads(config.to_json_best_effort()),
                   "keypoint_set": dataclasses.asdict(keypoint_set)}
        (directory / CONFIG_FILE).write_text(json.dumps(payload, indent=2))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def data_worker_count(self, step: int) -> int | None:
        """The grain worker count that checkpoint `step` saved the data position with (this process's), or None
        when it holds no data position. grain restores a position only into a loader with the same count."""
        saved = epath.Path(self.directory) / str(step) / "data"
        for path in saved.glob(f"process_{jax.process_index()}-of-*.json") if saved.exists() else ():
            return int(json.loads(path.read_text())["worker_count"])
        return None

    def restore_latest(self, abstract_state: Any, mesh: jax.sharding.Mesh,
                       data_iterator: grain.DataLoaderIterator | None) -> Any | None:
        """The newest checkpoint's state placed replicated on `mesh` (and the iterator moved), or None."""
        step = self._manager.latest_step()
        if step is None:
            return None
        replicated = sharding.replicated(mesh)
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract_state)
        items = {"state": ocp.args.StandardRestore(target)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"]

    def maybe_save(self, step: int, state: Any, data_iterator: grain.DataLoaderIterator, force: bool = False) -> bool:
        """Saves if `step` is due (or `force`); asynchronous."""
        return self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)), force=force)

    def reached_preemption(self, step: int) -> bool:
        """True on every process once any process was told of a preemption (multi-host TPU/GPU)."""
        return self._manager.reached_preemption(step)

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def _read_only_manager(checkpoint_dir: str) -> ocp.CheckpointManager:
    """A CheckpointManager that only reads `checkpoint_dir`. Both saved items have their handler, so orbax does not
    warn that it could not restore `data` (the grain position, which readers of the model never need); its notices
    of what read-only implies are hidden (`hvpose.notices`)."""
    with notices.hidden("CheckpointManagerOptions.read_only=True", "Given directory is read only"):
        return ocp.CheckpointManager(
            checkpoint_dir, item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                                           "data": grain.checkpoint.CheckpointHandler()},
            options=ocp.CheckpointManagerOptions(read_only=True))


def _shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
    """The shapes of a pytree's leaves (arrays, shape structs or orbax metadata) by dotted path
    (`params.backbone.stem_conv.kernel`)."""
    return {".".join(str(getattr(key, "key", key)) for key in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def variables_misfit(checkpoint_dir: str, step: int, variables: dict[str, Any], exact: bool = True) -> str:
    """"" when checkpoint `step` holds `variables`' arrays (its `params` and `batch_stats`: arrays or shapes) at
    their shapes, else the first that differs, as "PATH is SAVED there, GIVEN here". With `exact`, arrays the
    checkpoint holds beyond them differ too (a whole state restores only into the same tree). Only the
    checkpoint's metadata is read, so a model of other settings is refused before orbax fails inside a restore."""
    manager = _read_only_manager(checkpoint_dir)
    try:
        return _misfit(manager, step, variables, exact)
    finally:
        manager.close()


def _misfit(manager: ocp.CheckpointManager, step: int, variables: dict[str, Any], exact: bool) -> str:
    """`variables_misfit` through a manager that is already open."""
    saved = manager.item_metadata(step)["state"]
    stored = _shapes_by_path({kind: saved.get(kind, {}) for kind in variables})
    wanted = _shapes_by_path(variables)
    paths = sorted({*wanted, *stored} if exact else wanted)
    misfit = next((path for path in paths if stored.get(path) != wanted.get(path)), None)
    return "" if misfit is None else f"{misfit} is {stored.get(misfit)} there, {wanted.get(misfit)} here"


def upgrade_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A config saved by an older hvpose, in today's layout: the one place that knows the old names.

    - `model.compute_dtype` became `model.dtype` (the network's own attribute name);
    - `data.augment.enlarge_min`/`enlarge_max` became the range `data.augment.enlarge`;
    - the evaluation settings of the inference pipeline moved from `eval` to `inference`, and
      `eval.voting_radius` is gone (voting uses `loss.radius`, the same R);
    - `task` (the detector came with it) is "keypoints", `data.val.detector_workdir` and
      `data.synthetic.root` are empty;
    - fields added since (`model.bn_epsilon`, `model.frozen_stages`, `train.schedule`, `loss.unlabelled`, the decoder,
      `data.augment.shift_jitter`, `eval.draw_min_score`; the detector's `data.augment.zoom` and
      `inference.nms_method`, `soft_nms_sigma`, `vote_iou`; both tasks' `model.width_multipliers`, `data.read_threads`
      and `data.read_buffer`) get the value that older versions used implicitly.
    """
    from hvpose.data.pipeline import GRAIN_READ_BUFFER, GRAIN_READ_THREADS  # grain, TFDS: imported when needed

    config = copy.deepcopy(saved)
    config["model"].setdefault("width_multipliers", [])
    config["data"].setdefault("read_threads", GRAIN_READ_THREADS)
    config["data"].setdefault("read_buffer", GRAIN_READ_BUFFER)
    if config.setdefault("task", "keypoints") != "keypoints":  # detector configs came after every rename below
        config["data"]["augment"].setdefault("zoom", [1.0, 1.0])
        for field, value in (("nms_method", "greedy"), ("soft_nms_sigma", 0.5), ("vote_iou", 0.0)):
            config["inference"].setdefault(field, value)
        return config
    model, loss, train, evaluation = config["model"], config["loss"], config["train"], config["eval"]
    if "compute_dtype" in model:
        model["dtype"] = model.pop("compute_dtype")
    model.setdefault("bn_epsilon", 1.001e-5)
    model.setdefault("frozen_stages", 0)
    loss.setdefault("unlabelled", "negative")
    train.setdefault("schedule", "step")
    evaluation.setdefault("draw_min_score", 0.0)
    config["data"]["val"].setdefault("detector_workdir", "")
    config["data"]["synthetic"].setdefault("root", "")
    augment = config["data"]["augment"]
    augment.setdefault("shift_jitter", 0.0)
    if "enlarge_min" in augment:
        augment["enlarge"] = [augment.pop("enlarge_min"), augment.pop("enlarge_max")]
    if "inference" not in config:
        config["inference"] = {"flip_test": evaluation.pop("flip_test"),
                               "decoder": evaluation.pop("decoder", "hough"),
                               "keypoint_threshold": evaluation.pop("keypoint_threshold"),
                               "keypoint_average": "mean",
                               "use_box_score": evaluation.pop("use_box_score"),
                               "oks_nms_threshold": evaluation.pop("oks_nms_threshold")}
        evaluation.pop("voting_radius", None)
    return config


def read_config(checkpoint_dir: str) -> tuple[ml_collections.ConfigDict, KeypointSet]:
    """The config (in today's layout, `upgrade_config`) and keypoint set saved beside checkpoints by training."""
    payload = json.loads((epath.Path(checkpoint_dir) / CONFIG_FILE).read_text())
    keypoint_set = payload["keypoint_set"]
    keypoint_set = KeypointSet(
        names=tuple(keypoint_set["names"]), skeleton=tuple(map(tuple, keypoint_set["skeleton"])),
        flip_pairs=tuple(map(tuple, keypoint_set["flip_pairs"])), sigmas=tuple(keypoint_set["sigmas"]))
    return ml_collections.ConfigDict(upgrade_config(payload["config"])), keypoint_set


def restore_model_variables(checkpoint_dir: str, model: Any, crop_size: tuple[int, int], step: int | None = None,
                            mesh: jax.sharding.Mesh | None = None) -> tuple[dict[str, Any], int]:
    """The model variables (`params`, `batch_stats`) of a checkpoint (newest by default), replicated on `mesh`.

    Only those two parts of the saved train state are read: their shapes come from `jax.eval_shape` of the
    model's initialisation, so no optimizer is built and its state is never loaded. A relative `checkpoint_dir`
    is taken from the working directory (orbax wants absolute paths).
    """
    checkpoint_dir = resolve_workdir(checkpoint_dir)
    manager = _read_only_manager(checkpoint_dir)
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{checkpoint_dir}: no checkpoint")
        shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *crop_size, 3), jnp.uint8)))
        replicated = sharding.replicated(mesh or sharding.make_mesh())
        target = {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}
        # Shapes that do not fit: the model settings that differ, in one line (the rest of the state is not read).
        if misfit := _misfit(manager, step, target, exact=False):
            raise ConfigError(f"{checkpoint_dir}: its parameters do not fit the given model ({misfit}); it was "
                              f"trained with {model_differences(checkpoint_dir, model) or 'other model settings'}")
        restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=replicated), target)
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)))
    finally:
        manager.close()
    return dict(restored["state"]), step


def restore_backbone(workdir: str) -> tuple[dict[str, Any], int]:
    """The ResNet of an hvpose training workdir's newest checkpoint (a keypoint network's or a detector's) and its
    step: `{"params": {unit: array}, "batch_stats": {unit: array}}`, numpy arrays named as `ResNet`'s units.

    Only the backbone is read (shapes from the checkpoint's own metadata, so no model is built). A detector whose
    second stage runs conv5_x per RoI (`head="block4"`) keeps those units beside its backbone; they are returned
    with it, so the result is always the whole ResNet that was trained.
    """
    checkpoint_dir = resolve_workdir(str(epath.Path(workdir) / "checkpoints"))
    manager = _read_only_manager(checkpoint_dir)
    try:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"{checkpoint_dir}: no checkpoint")
        saved = manager.item_metadata(step)["state"]
        resnet_units = lambda tree: {name: value for name, value in tree.items()  # noqa: E731
                                     if name == "backbone" or name.startswith("block4_")}
        target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype),
                              {kind: resnet_units(saved[kind]) for kind in ("params", "batch_stats")})
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)))["state"]
    finally:
        manager.close()
    return {kind: {**restored[kind].get("backbone", {}),
                   **{name: units for name, units in restored[kind].items() if name != "backbone"}}
            for kind in ("params", "batch_stats")}, step


def model_differences(checkpoint_dir: str, model: Any) -> str:
    """The `model` settings whose value differs from the config saved beside the checkpoints, as
    "config.model.FIELD=SAVED (given GIVEN), ..." ("" when they agree or no config was saved)."""
    try:
        saved, _ = read_config(checkpoint_dir)
    except (FileNotFoundError, KeyError, ValueError):  # none saved, or not one this version can read
        return ""

    def normalise(field: str, value: Any) -> Any:
        if field == "width_multipliers":  # () and (1, 2, 4, 8) are the same widths
            return list(canonical_multipliers(value))
        return list(value) if isinstance(value, tuple | list) else value

    return ", ".join(f"config.model.{field}={value!r} (given {getattr(model, field)!r})"
                     for field, value in saved.model.to_dict().items()
                     if hasattr(model, field) and normalise(field, getattr(model, field)) != normalise(field, value))
