"""Training: the pure step, sharding equivalence on 8 fake devices, exact resumption, NaN stops, no retracing."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from hvpose import sharding
from hvpose.configs import demo
from hvpose.errors import ConfigError
from hvpose.models.keypoint_net import KeypointNet
from hvpose.train import (
    NonFiniteLossError,
    TrainState,
    init_state,
    jit_train_step,
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


def test_step_is_jitted_once_updates_and_skips_non_finite_losses(rng):
    config = tiny_config()
    model, optimizer, step_args = tiny_model_and_optimizer(config)
    mesh = sharding.make_mesh()
    with jax.set_mesh(mesh):
        state = jax.device_put(init_state(model, optimizer, (33, 25), 0), sharding.replicated(mesh))
        step = jit_train_step(model, optimizer, *step_args, mesh, state)
        losses = []
        for _ in range(4):
            state, metrics = step(state, random_batch(rng))
            losses.append(float(metrics["loss"]))
        assert step._cache_size() == 1 and int(state.step) == 4 and int(state.nonfinite_step) == -1
        # A NaN weight makes the loss NaN: the update is skipped and the step recorded.
        params = jax.tree_util.tree_map_with_path(
            lambda path, x: x.at[0].set(jnp.nan) if jax.tree_util.keystr(path) == "['head']['bias']" else x,
            state.params)
        state = state.replace(params=params)
        params_before = jax.tree.map(np.asarray, state.params)
        state, metrics = step(state, random_batch(rng))
        assert not np.isfinite(float(metrics["loss"]))
        assert int(state.nonfinite_step) == 4 and int(state.step) == 5
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), params_before,
                     jax.tree.map(np.asarray, state.params))
        assert step._cache_size() == 1


@pytest.mark.slow
def test_sharded_step_on_8_devices_equals_single_device():
    script = textwrap.dedent(f"""
        import os, sys
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / 'tests')!r})
        import jax, numpy as np
        from test_train import tiny_config, tiny_model_and_optimizer, random_batch
        from hvpose import sharding
        from hvpose.train import init_state, jit_train_step
        assert jax.device_count() == 8
        config = tiny_config()
        model, optimizer, step_args = tiny_model_and_optimizer(config)
        losses = {{}}
        for name, devices in (("one", jax.devices()[:1]), ("eight", jax.devices())):
            mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                                 devices=devices)
            rng = np.random.default_rng(0)
            with jax.set_mesh(mesh):
                state = jax.device_put(init_state(model, optimizer, (33, 25), 0), sharding.replicated(mesh))
                step = jit_train_step(model, optimizer, *step_args, mesh, state)
                losses[name] = []
                for _ in range(4):
                    batch = jax.device_put(random_batch(rng), sharding.batch_sharded(mesh))
                    state, metrics = step(state, batch)
                    losses[name].append(float(metrics["loss"]))
            assert len(batch["image"].sharding.device_set) == len(devices)
        print(losses)
        np.testing.assert_allclose(losses["eight"], losses["one"], rtol=1e-3)
        print("max relative difference", max(abs(a - b) / abs(b) for a, b in zip(losses["eight"], losses["one"])))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def losses_by_step(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


@pytest.mark.slow
def test_stopped_and_resumed_run_matches_uninterrupted(tmp_path):
    config = tiny_config(workdir_steps=6)
    train(config, str(tmp_path / "straight"))
    stopped = str(tmp_path / "stopped")
    state = train(config, stopped, stop_at=3)
    assert int(state.step) == 3
    assert sorted(os.listdir(os.path.join(stopped, "checkpoints"))) == ["3", "config.json"]
    train(config, stopped)
    straight, resumed = losses_by_step(tmp_path / "straight"), losses_by_step(stopped)
    assert sorted(straight) == sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for step in straight:
        assert abs(resumed[step] - straight[step]) <= 1e-5 * abs(straight[step]), (step, straight, resumed)


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
def test_resume_on_eight_devices_after_training_on_one(tmp_path):
    config = tiny_config(workdir_steps=6)
    workdir = str(tmp_path / "run")
    train(config, workdir, stop_at=3)
    script = textwrap.dedent(f"""
        import os, sys
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / 'tests')!r})
        import jax
        from test_train import tiny_config
        from hvpose.train import train
        assert jax.device_count() == 8
        state = train(tiny_config(workdir_steps=6), {workdir!r})
        assert int(state.step) == 6
        assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == 8
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
    steps = sorted(losses_by_step(workdir))
    assert steps == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(list(losses_by_step(workdir).values())))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_same_command_resumes(tmp_path):
    import signal
    import time

    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "hvpose.main", "--config=configs/demo.py", f"--workdir={workdir}",
               "--mode=train", "--config.model.base_width=8", "--config.model.output_stride=8",
               "--config.crop.height=33", "--config.crop.width=25", "--config.loss.radius=4.0",
               "--config.loss.offset_scale=4.0", "--config.data.synthetic.num_train=6",
               "--config.data.synthetic.num_val=3", "--config.data.worker_count=0", "--config.train.batch_size=4",
               "--config.train.log_every=1", "--config.train.checkpoint_every=1000"]
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
    assert len(saved) == 1 and saved[0] >= 3 and "stop requested; saved step" in stderr
    resumed = subprocess.run([*command, f"--config.train.steps={saved[0] + 2}"], cwd=REPO, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps[-2:] == [saved[0] + 1, saved[0] + 2]


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
