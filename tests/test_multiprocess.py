"""`python -m hvpose.main` on two processes (jax.distributed over localhost, CPU): the multi-host path of a TPU pod
or a Slurm job, run for real. Slurm's environment variables make each process find the others, as on a cluster."""

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import REPO
from test_main import TINY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_and_evaluate_together(tmp_path):
    port = free_port()
    processes = []
    for rank in range(2):
        env = {**os.environ, "SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_NTASKS": "2",
               "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank),
               "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_PLATFORMS": "cpu"}
        env.pop("XLA_FLAGS", None)
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "hvpose.main", "--config=configs/demo.py", f"--workdir={tmp_path}",
             *TINY, "--config.train.steps=3", "--config.data.synthetic.num_train=8"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0 and "Traceback" not in stderr, stderr[-3000:]
    # One global run: process 0 alone logs each step once, the checkpoint is saved collectively, both evaluate.
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert (tmp_path / "checkpoints" / "3").is_dir()
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["step"] == 3
    assert "keypoint AP" in outputs[0][1]
