"""Training: the pure step, sharding equivalence on 8 fake devices, exact resumption, NaN stops, no retracing."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import REPO
from hvpose import checkpoints, detector, sharding
from hvpose.configs import demo, detector_demo
from hvpose.data.splits import prepare_split
from hvpose.errors import ConfigError
from hvpose.models.keypoint_net import KeypointNet
from hvpose.train import (
    NonFiniteLossError,
    TrainState,
    init_state,
    jit_train_step,
    keypoint_task,
    learning_rate_schedule,
    make_optimizer,
    train,
)


def tiny_config(workdir_steps=6):
    config = demo.get_config()
    config.model.base_width = 8
    config.model.output_stride = 8
    config.crop.height, config.crop.width = 33, 25
    config.loss.radius = config.loss.offset_scale = 4.0
    config.data.synthetic.num_train, config.data.synthetic.num_val = 8, 4
    config.data.worker_count = 0
    config.train.batch_size = 8
    config.train.steps = workdir_steps
    config.train.warmup_steps = 2
    # The tiny network's own rate, not the demo's: at the demo's (4x) the one- and eight-device runs of
    # test_sharded_step_on_8_devices_equals_single_device still agree in loss to 1e-5 over four steps, but a
    # BatchNorm bias of block1 ends 5% apart (likely Adam's: its first steps are about +-lr whatever a gradient's
    # size, so a near-zero gradient's sign, which summation order can flip, decides them). At this rate every
    # leaf agrees to 1e-5.
    config.train.learning_rate = 4e-3
    config.train.log_every = 1
    config.train.checkpoint_every = 3
    config.eval.batch_size = 8
    return config


def tiny_model_and_optimizer(config):
    """The network, optimizer and (schedule, loss settings) of a config, built as `train.train` builds them."""
    model = KeypointNet(num_keypoints=17, map_stride=config.loss.map_stride, **config.model)
    return model, make_optimizer(config.train), (learning_rate_schedule(config.train), config.loss.to_dict())


def random_batch(rng, batch=8, size=(33, 25), k=17):
    keypoints = np.concatenate([rng.uniform(0, [size[1], size[0]], (batch, k, 2)),
                                rng.integers(0, 3, (batch, k, 1))], -1).astype(np.float32)
    return {"image": rng.integers(0, 256, (batch, *size, 3), np.uint8), "keypoints": keypoints}


def state_leaves(tree):
    """Every leaf of a pytree (a `TrainState`: step, parameters, BatchNorm statistics, optimizer state) as a numpy
    copy, keyed by its path (`.params['head']['bias']`, `.opt_state[1][0].mu[...]`): safe from donation."""
    return {jax.tree_util.keystr(path): np.array(np.asarray(x))
            for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def save_leaves(path, leaves):
    np.savez(path, paths=np.array(list(leaves)), **{f"arr_{i}": leaf for i, leaf in enumerate(leaves.values())})


def load_leaves(path):
    with np.load(path) as saved:
        return {key: saved[f"arr_{i}"] for i, key in enumerate(saved["paths"].tolist())}


def assert_states_close(actual, expected, tol=1e-5):
    """The same leaves; integers (step, counters) equal, floats within `tol` of the expected value relative to it
    and to the leaf's largest magnitude (a near-zero Adam moment is compared at its leaf's scale)."""
    assert sorted(actual) == sorted(expected)
    for key, want in expected.items():
        got = actual[key]
        assert got.shape == want.shape and got.dtype == want.dtype, key
        if np.issubdtype(want.dtype, np.integer):
            np.testing.assert_array_equal(got, want, err_msg=key)
        else:
            scale = float(np.max(np.abs(want))) if want.size else 0.0
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=key)


def unchanged_leaves(before, after, prefixes=(".params", ".batch_stats", ".opt_state")):
    """The leaves under `prefixes` whose value a step (or steps) left exactly as it was (NaN as NaN)."""
    return sorted(key for key in before
                  if key.startswith(prefixes) and np.array_equal(before[key], after[key], equal_nan=True))


def logged(workdir):
    """metrics.jsonl in order, as (step, loss) pairs: a step that a resumed run redid shows up twice."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f)]


RESUMED = re.compile(r"hvpose: resumed from step (\d+) in ")


def resumed_from(caplog):
    """The steps that `train` said it resumed from (WARNING on the `hvpose.train` logger)."""
    return [int(m[1]) for r in caplog.records if r.name == "hvpose.train" and (m := RESUMED.search(r.getMessage()))]


def test_step_is_jitted_once_updates_and_skips_non_finite_losses(rng):
    config = tiny_config()
    model, optimizer, step_args = tiny_model_and_optimizer(config)
    schedule = step_args[0]
    mesh = sharding.make_mesh()
    with jax.set_mesh(mesh):
        state = jax.device_put(init_state(model, optimizer, (33, 25), 0), sharding.replicated(mesh))
        initial = state_leaves(state)  # copies: the step donates the state
        step = jit_train_step(model, optimizer, *step_args, mesh, state)
        losses, learning_rates = [], []
        for _ in range(4):
            state, metrics = step(state, random_batch(rng))
            losses.append(float(metrics["loss"]))
            learning_rates.append(float(metrics["learning_rate"]))
        assert step._cache_size() == 1 and int(state.step) == 4 and int(state.nonfinite_step) == -1
        assert np.all(np.isfinite(losses))
        np.testing.assert_allclose(learning_rates, [float(schedule(i)) for i in range(4)], rtol=1e-6)
        # The steps updated: every parameter, every BatchNorm statistic and every optimizer moment and counter moved.
        trained = state_leaves(state)
        assert unchanged_leaves(initial, trained) == []
        assert any(key.startswith(".batch_stats") for key in initial)
        # A NaN weight makes the loss NaN: the update is skipped and the step recorded.
        params = jax.tree_util.tree_map_with_path(
            lambda path, x: x.at[0].set(jnp.nan) if jax.tree_util.keystr(path) == "['head']['bias']" else x,
            state.params)
        state = state.replace(params=params)
        before = state_leaves(state)
        state, metrics = step(state, random_batch(rng))
        assert not np.isfinite(float(metrics["loss"]))
        assert int(state.nonfinite_step) == 4 and int(state.step) == 5
        skipped = state_leaves(state)
        assert unchanged_leaves(before, skipped) == sorted(k for k in before if k.startswith((".params", ".batch_stats",
                                                                                              ".opt_state")))
        assert step._cache_size() == 1


def random_like(rng, tree, scale=1.0):
    return jax.tree.map(lambda x: (scale * rng.normal(size=x.shape)).astype(np.float32), tree)


def model_param_shapes(config):
    model, _, _ = tiny_model_and_optimizer(config)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 33, 25, 3), jnp.uint8)))["params"]


@pytest.mark.parametrize("name, first_step_factor", [("adamw", 1.0), ("momentum", 1.9)])
def test_weight_decay_applies_to_kernels_only(rng, name, first_step_factor):
    config = tiny_config()
    config.train.optimizer, config.train.weight_decay = name, 0.1
    params = random_like(rng, model_param_shapes(config))  # nonzero everywhere, BatchNorm scales and biases too
    optimizer = make_optimizer(config.train)
    learning_rate = float(learning_rate_schedule(config.train)(0))
    # With a zero gradient, Adam's and momentum's own updates are zero: what is left is the weight decay,
    # -lr * weight_decay * p (times 1 + 0.9 for Nesterov momentum's first step), on convolution kernels only.
    zero = jax.tree.map(np.zeros_like, params)
    updates, _ = jax.jit(optimizer.update)(zero, optimizer.init(params), params)
    updates, params = state_leaves(updates), state_leaves(params)
    kernels = sorted(key for key in params if key.endswith("['kernel']"))
    others = sorted(set(params) - set(kernels))
    assert len(kernels) > 20 and any(k.endswith("['scale']") for k in others)
    assert any(k.endswith("['bias']") for k in others) and "['head']['bias']" in others
    for key in kernels:
        np.testing.assert_allclose(updates[key], -first_step_factor * learning_rate * 0.1 * params[key], rtol=1e-5,
                                   err_msg=key)
    for key in others:
        np.testing.assert_array_equal(updates[key], 0, err_msg=key)


def small_params(rng):
    """A convolution kernel, a BatchNorm scale and bias: enough for the optimizer's arithmetic."""
    return {"conv": {"kernel": rng.normal(size=(3, 3, 4, 8)).astype(np.float32)},
            "bn": {"scale": rng.normal(size=8).astype(np.float32), "bias": rng.normal(size=8).astype(np.float32)}}


def test_gradient_clipping_scales_the_gradient_to_the_clip_norm(rng):
    config = tiny_config()
    config.train.weight_decay = 0.0
    params = small_params(rng)
    grads = random_like(rng, params, scale=10.0)
    norm = float(optax.tree.norm(grads))
    learning_rate = float(learning_rate_schedule(config.train)(0))
    clip = norm / 100
    for name in ("momentum", "adamw"):
        config.train.optimizer = name
        results = {}
        for clip_norm in (0.0, clip, 10 * norm):  # off, a tenth of a percent of the gradient, above it
            config.train.grad_clip_norm = clip_norm
            optimizer = make_optimizer(config.train)
            results[clip_norm] = optimizer.update(grads, optimizer.init(params), params)
        (unclipped, unclipped_state), (clipped, clipped_state), (loose, _) = results.values()
        # A gradient under the clip norm is untouched.
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), loose, unclipped)
        if name == "momentum":  # SGD is linear in the gradient: the clipped update is the unclipped one scaled
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b * clip / norm, rtol=1e-5), clipped, unclipped)
            assert float(optax.tree.norm(clipped)) == pytest.approx(1.9 * learning_rate * clip, rel=1e-5)
        else:  # Adam normalises the update; its first moment (1 - b1) * g shows the clipped gradient
            mu, mu_unclipped = optax.tree.get(clipped_state, "mu"), optax.tree.get(unclipped_state, "mu")
            assert float(optax.tree.norm(mu)) == pytest.approx(0.1 * clip, rel=1e-5)
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b * clip / norm, rtol=1e-5), mu, mu_unclipped)


def test_momentum_optimizer_is_nesterov_sgd_with_weight_decay_on_kernels(rng):
    config = tiny_config()
    config.train.optimizer, config.train.weight_decay, config.train.grad_clip_norm = "momentum", 0.1, 0.0
    schedule = learning_rate_schedule(config.train)
    optimizer = make_optimizer(config.train)
    params = small_params(rng)
    decay = {"conv": {"kernel": 0.1}, "bn": {"scale": 0.0, "bias": 0.0}}
    opt_state, trace = optimizer.init(params), jax.tree.map(np.zeros_like, params)
    for step in range(3):
        grads = random_like(rng, params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        # By hand: d = g + wd * p (kernels); trace = d + 0.9 trace; update = -lr (d + 0.9 trace).
        direction = jax.tree.map(lambda g, p, wd: g + wd * p, grads, params, decay)
        trace = jax.tree.map(lambda d, t: d + 0.9 * t, direction, trace)
        expected = optax.tree.scale(-float(schedule(step)), jax.tree.map(lambda d, t: d + 0.9 * t, direction, trace))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-12), updates, expected)
        new_params = optax.apply_updates(params, updates)
        assert unchanged_leaves(state_leaves(params), state_leaves(new_params), prefixes=("",)) == []
        params = new_params


@pytest.mark.slow
def test_sharded_step_on_8_devices_equals_single_device(tmp_path):
    script = textwrap.dedent(f"""
        import json, os, sys
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / 'tests')!r})
        import jax, numpy as np
        from test_train import tiny_config, tiny_model_and_optimizer, random_batch, save_leaves, state_leaves
        from hvpose import sharding
        from hvpose.train import init_state, jit_train_step
        assert jax.device_count() == 8
        config = tiny_config()
        model, optimizer, step_args = tiny_model_and_optimizer(config)
        initial = jax.tree.map(np.asarray, init_state(model, optimizer, (33, 25), 0))  # one init for both meshes
        save_leaves({str(tmp_path / 'initial.npz')!r}, state_leaves(initial))
        losses = {{}}
        for name, devices in (("one", jax.devices()[:1]), ("eight", jax.devices())):
            mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                                 devices=devices)
            rng = np.random.default_rng(0)
            with jax.set_mesh(mesh):
                state = jax.device_put(jax.tree.map(np.copy, initial), sharding.replicated(mesh))
                step = jit_train_step(model, optimizer, *step_args, mesh, state)
                losses[name] = []
                for _ in range(4):
                    batch = jax.device_put(random_batch(rng), sharding.batch_sharded(mesh))
                    state, metrics = step(state, batch)
                    losses[name].append(float(metrics["loss"]))
            assert len(batch["image"].sharding.device_set) == len(devices)
            assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == len(devices)
            save_leaves(os.path.join({str(tmp_path)!r}, name + ".npz"), state_leaves(state))
        with open(os.path.join({str(tmp_path)!r}, "losses.json"), "w") as f:
            json.dump(losses, f)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    initial, one, eight = (load_leaves(tmp_path / f"{name}.npz") for name in ("initial", "one", "eight"))
    losses = json.loads((tmp_path / "losses.json").read_text())
    np.testing.assert_allclose(losses["eight"], losses["one"], rtol=1e-5)
    # Parameters, BatchNorm statistics (over the global batch) and optimizer state after 4 steps: alike.
    assert_states_close(eight, one)
    assert unchanged_leaves(initial, one) == [] and int(one[".step"]) == 4


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """`tiny_config`'s 6 steps trained in one go: the workdir and the final state's leaves (for the resumptions)."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    state = train(tiny_config(workdir_steps=6), str(workdir))
    return workdir, state_leaves(state)


@pytest.mark.slow
def test_stopped_and_resumed_run_matches_uninterrupted(tmp_path, uninterrupted, caplog):
    straight_dir, straight_state = uninterrupted
    config = tiny_config(workdir_steps=6)
    stopped = str(tmp_path / "stopped")
    with caplog.at_level(logging.WARNING, logger="hvpose.train"):
        state = train(config, stopped, stop_at=3)
        assert int(state.step) == 3 and resumed_from(caplog) == []
        assert sorted(os.listdir(os.path.join(stopped, "checkpoints"))) == ["3", "config.json"]
        caplog.clear()
        config.data.read_threads, config.data.read_buffer = 16, 500  # grain's defaults: the same batches follow
        state = train(config, stopped)
        assert resumed_from(caplog) == [3]
    straight, resumed = logged(straight_dir), logged(stopped)
    assert [step for step, _ in straight] == [step for step, _ in resumed] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([loss for _, loss in resumed], [loss for _, loss in straight], rtol=1e-5)
    assert_states_close(state_leaves(state), straight_state)


@pytest.mark.slow
def test_resuming_with_another_worker_count_or_model_is_refused_but_a_finished_run_reloads(tmp_path, caplog):
    """grain resumes a data position only into a loader with the same worker count: a run stopped midway refuses
    another count in one clear error; a finished run (re-run to evaluate) needs no data position and reloads. A
    model of other settings (a re-run over an older demo's workdir) is refused in one line, finished or not."""
    config = tiny_config(workdir_steps=3)
    workdir = str(tmp_path / "run")
    trained = state_leaves(train(config, workdir))  # worker_count 0: decoded in this process
    config.data.worker_count = 1
    with caplog.at_level(logging.WARNING, logger="hvpose.train"):
        reloaded = state_leaves(train(config, workdir))
    assert resumed_from(caplog) == [3]
    assert_states_close(reloaded, trained, tol=0)
    config.train.steps = 6
    saved_config = (tmp_path / "run" / "checkpoints" / "config.json").read_text()
    with pytest.raises(ConfigError, match=r"saved the data position of config.data.worker_count=0, and grain "
                                          r"resumes it only with the same count \(given 1\): add "
                                          r"--config.data.worker_count=0"):
        train(config, workdir)
    assert [step for step, _ in logged(workdir)] == [1, 2, 3]  # the refused run trained nothing
    assert (tmp_path / "run" / "checkpoints" / "config.json").read_text() == saved_config  # nor wrote its config
    config.data.worker_count, config.train.steps = 0, 3
    config.model.width_multipliers = (1, 2, 4, 2)
    with pytest.raises(ConfigError, match=r"/3 does not fit this model \(batch_stats.backbone.block4_unit1.bn1.mean is "
                                          r"\(32,\) there, \(16,\) here\); it was trained with "
                                          r"config.model.width_multipliers=\[1, 2, 4, 4\] \(given \(1, 2, 4, 2\)\)"):
        train(config, workdir)
    assert (tmp_path / "run" / "checkpoints" / "config.json").read_text() == saved_config
    # Settings that leave every shape alone still resume.
    config.model.width_multipliers, config.model.bn_momentum = (1, 2, 4, 4), 0.8
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hvpose.train"):
        assert_states_close(state_leaves(train(config, workdir)), trained, tol=0)
    assert resumed_from(caplog) == [3]


@pytest.mark.parametrize("config_module", [demo, detector_demo], ids=["keypoints", "detection"])
def test_the_read_options_reach_the_training_loader(tmp_path, loader_read_options, config_module):
    config = config_module.get_config()
    config.data.synthetic.num_train, config.data.synthetic.num_val = 4, 2
    config.data.read_threads, config.data.read_buffer = 3, 7
    prepared = prepare_split(config.data, "train", str(tmp_path), config.seed)
    keypoint_task(config, prepared) if config_module is demo else detector.training_task(config, prepared)
    assert loader_read_options == [(3, 7)]
    config.data.read_buffer = -1  # refused before anything is prepared or written
    with pytest.raises(ConfigError, match=r"^config.data.read_threads / read_buffer: .*non-negative"):
        train(config, str(tmp_path / "refused"))
    assert not (tmp_path / "refused").exists()


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    config = tiny_config(workdir_steps=3)
    config.loss.heatmap_weight = float("nan")
    with pytest.raises(NonFiniteLossError, match="non-finite loss or gradient at step 0"):
        train(config, str(tmp_path))


def test_state_is_a_pytree_of_arrays():
    config = tiny_config()
    model, optimizer, _ = tiny_model_and_optimizer(config)
    state = jax.eval_shape(lambda: init_state(model, optimizer, (33, 25), 0))
    assert isinstance(state, TrainState)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(state))
    assert state.step.dtype == jnp.int32


@pytest.mark.slow
def test_resume_on_eight_devices_after_training_on_one(tmp_path, uninterrupted):
    straight_dir, straight_state = uninterrupted
    workdir = str(tmp_path / "run")
    train(tiny_config(workdir_steps=6), workdir, stop_at=3)
    saved = str(tmp_path / "resumed.npz")
    script = textwrap.dedent(f"""
        import logging, os, sys
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
        sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / 'tests')!r})
        import jax
        from test_train import save_leaves, state_leaves, tiny_config
        from hvpose.train import train
        assert jax.device_count() == 8
        state = train(tiny_config(workdir_steps=6), {workdir!r})
        assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == 8
        save_leaves({saved!r}, state_leaves(state))
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
    assert "hvpose.train: hvpose: resumed from step 3 in " in result.stderr, result.stderr[-3000:]
    straight, resumed = logged(straight_dir), logged(workdir)
    assert [step for step, _ in resumed] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([loss for _, loss in resumed], [loss for _, loss in straight], rtol=1e-5)
    # Steps 4-6 on 8 devices from the 1-device checkpoint: the state of 6 steps on 1 device. The tolerance is 3% of
    # each leaf's scale: on an AMD EPYC the 8-device reduction order moves Adam's update (m / sqrt(v)) of BatchNorm
    # biases with near-zero gradients by up to 1% of their value (the commit before stage 1 fails 1e-5 there too);
    # a wrongly restored state (optimizer reset, wrong step) is off by its whole size.
    # Adam's moments of those near-zero gradients differ the same way, so the optimizer state is compared by its
    # counters; the losses of steps 4-6 (above) stay within 1e-5.
    resumed_state = load_leaves(saved)
    kept = [key for key in straight_state if not key.startswith(".opt_state")
            or np.issubdtype(straight_state[key].dtype, np.integer)]
    assert_states_close({k: resumed_state[k] for k in kept}, {k: straight_state[k] for k in kept}, tol=3e-2)


# The SIGTERM test's command line, and the config it makes (for its uninterrupted twin); SGD with momentum,
# so that optimizer trains (and resumes) end to end too.
SIGTERM_OVERRIDES = {
    "model.base_width": 8, "model.output_stride": 8, "crop.height": 33, "crop.width": 25, "loss.radius": 4.0,
    "loss.offset_scale": 4.0, "data.synthetic.num_train": 6, "data.synthetic.num_val": 3, "data.worker_count": 0,
    "train.batch_size": 4, "train.log_every": 1, "train.checkpoint_every": 1000, "train.optimizer": "momentum"}


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_same_command_resumes(tmp_path):
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "hvpose.main", "--config=configs/demo.py", f"--workdir={workdir}",
               "--mode=train", *(f"--config.{key}={value}" for key, value in SIGTERM_OVERRIDES.items())]
    process = subprocess.Popen([*command, "--config.train.steps=100000"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert len(saved) == 1 and saved[0] >= 3 and f"stop requested; saved step {saved[0]}," in stderr
    assert "resumed from" not in stderr
    stopped_at = saved[0]
    resumed = subprocess.run([*command, f"--config.train.steps={stopped_at + 2}"], cwd=REPO, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"hvpose: resumed from step {stopped_at} in " in resumed.stderr, resumed.stderr[-3000:]
    assert [step for step, _ in logged(workdir)] == list(range(1, stopped_at + 3))

    # The same command without the SIGTERM, in this process: the same final state (the checkpoint at the end).
    config = demo.get_config()
    config.update_from_flattened_dict({**SIGTERM_OVERRIDES, "train.steps": stopped_at + 2})
    straight = train(config, str(tmp_path / "straight"))
    manager = checkpoints.Checkpointer(str(workdir / "checkpoints"), 1000, 3)
    try:
        assert manager.latest_step() == stopped_at + 2
        final = manager.restore_latest(straight, sharding.make_mesh(), None)
    finally:
        manager.close()
    assert_states_close(state_leaves(final), state_leaves(straight))
    # ... and momentum SGD moved every kernel in the two resumed steps. (Not every parameter: during warm-up a
    # BatchNorm scale near 1 can take an update below float32's resolution there and stay bit-identical.)
    model, _, _ = tiny_model_and_optimizer(config)
    at_stop, _ = checkpoints.restore_model_variables(str(workdir / "checkpoints"), model, (33, 25), step=stopped_at)
    still = unchanged_leaves(state_leaves(at_stop["params"]), state_leaves(final.params), prefixes=("",))
    assert [key for key in still if key.endswith("['kernel']")] == []
    assert len(still) < len(state_leaves(final.params)) // 2


def test_learning_rate_schedules():
    config = tiny_config()
    config.train.steps, config.train.warmup_steps, config.train.batch_size = 1000, 100, 64
    config.train.learning_rate, config.train.decay_boundaries = 1e-3, (0.5, 0.9)
    step = learning_rate_schedule(config.train)
    assert float(step(0)) == pytest.approx(1e-6, rel=1e-4) and float(step(100)) == pytest.approx(1e-3)
    assert float(step(499)) == pytest.approx(1e-3) and float(step(500)) == pytest.approx(1e-4)
    assert float(step(950)) == pytest.approx(1e-5)
    config.train.schedule = "cosine"
    cosine = learning_rate_schedule(config.train)
    assert float(cosine(100)) == pytest.approx(1e-3)
    assert float(cosine(550)) == pytest.approx(0.5e-3, rel=1e-4) and float(cosine(1000)) == pytest.approx(0, abs=1e-9)
    config.train.schedule = "linear"
    with pytest.raises(ConfigError, match="config.train.schedule"):
        learning_rate_schedule(config.train)
