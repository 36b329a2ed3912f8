"""launch/tpu_vm.sh and launch/slurm_gpu.sh: their dry runs, and the shell they send to the workers / to sbatch.

No network, gcloud or Slurm: `gcloud`, `sbatch` and `srun` are stubs that record calls, and the remote install is
run locally against stub python3/curl/git/uv in a temporary HOME.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TPU = REPO / "launch" / "tpu_vm.sh"
SLURM = REPO / "launch" / "slurm_gpu.sh"


def _stub(bin_dir: pathlib.Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


@pytest.fixture
def env(tmp_path: pathlib.Path) -> dict[str, str]:
    """A bare environment whose gcloud/sbatch/srun stubs log their calls to tmp/calls and fail."""
    bin_dir = tmp_path / "stub-bin"
    bin_dir.mkdir()
    for name in ("gcloud", "sbatch", "srun"):
        _stub(bin_dir, name, f'echo "{name} $*" >> {tmp_path}/calls; exit 1\n')
    home = tmp_path / "home"
    home.mkdir()
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}


def _bash(script: pathlib.Path, *args: str, env: dict[str, str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=30)


def _calls(tmp_path: pathlib.Path) -> str:
    calls = tmp_path / "calls"
    return calls.read_text() if calls.exists() else ""


def _tpu_dry_run(action: str, env: dict[str, str], tmp_path: pathlib.Path, **settings: str) -> list[list[str]]:
    """The commands `tpu_vm.sh --dry-run ACTION` prints, each split into words as the shell would."""
    proc = _bash(TPU, "--dry-run", action, env={**env, **settings}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _calls(tmp_path) == "", "a dry run must not call gcloud"
    lines = proc.stdout.splitlines()
    assert lines and all(line.startswith("+ ") for line in lines), proc.stdout
    return [shlex.split(line[2:]) for line in lines]


def _remote(words: list[str]) -> str:
    """The --command of a `gcloud compute tpus tpu-vm ssh --worker=all` line."""
    assert words[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"], words
    assert "--worker=all" in words, words
    (command,) = [w.removeprefix("--command=") for w in words if w.startswith("--command=")]
    return command


def _steps(command: str) -> list[str]:
    return [step.strip() for step in command.split("; ")]


@pytest.mark.parametrize("script", [TPU, SLURM], ids=lambda p: p.name)
def test_scripts_parse(script: pathlib.Path) -> None:
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------------------- tpu_vm.sh


def test_tpu_install_provisions_python_312_with_uv(env, tmp_path) -> None:
    commands = _tpu_dry_run("install", env, tmp_path, REPO_URL="https://git.example/hvpose.git", BRANCH="dev")
    install = _remote(commands[0])
    steps = _steps(install)
    uv = "~/.local/bin/uv"
    # uv from PyPI with the image's pip, else from the standalone installer into ~/.local/bin.
    bootstrap = install.index("if python3 -m pip install -q --user -U uv; then :; else ")
    fallback = install.index("curl -LsSf -o ~/.uv-install.sh https://astral.sh/uv/install.sh; "
                             "UV_UNMANAGED_INSTALL=$HOME/.local/bin sh ~/.uv-install.sh; fi; ")
    assert bootstrap < fallback < install.index(f"{uv} --version")
    expected = [
        f"{uv} --version",
        f"{uv} python install 3.12",
        "git clone --branch dev https://git.example/hvpose.git ~/hvpose",
        "cd ~/hvpose",
        f"{uv} venv --seed --python 3.12 .venv",
        f"{uv} pip install -q --python .venv/bin/python -e . 'jax[tpu]' gcsfs google-cloud-storage",
    ]
    assert [s for s in steps if s in expected] == expected, steps
    # The image's python3 (3.10 on tpu-ubuntu2204-base) never makes the venv or installs hvpose.
    assert "python3 -m venv" not in install
    assert "pip install -e" not in install and ".venv/bin/pip" not in install


def test_tpu_python_version_is_a_setting(env, tmp_path) -> None:
    install = _remote(_tpu_dry_run("install", env, tmp_path, PYTHON_VERSION="3.13")[0])
    assert "uv python install 3.13" in install and "uv venv --seed --python 3.13 .venv" in install
    assert "3.12" not in install


def test_tpu_install_ends_with_check_on_every_worker(env, tmp_path) -> None:
    commands = _tpu_dry_run("install", env, tmp_path)
    assert len(commands) == 2, commands
    check = _remote(commands[1])
    assert check.startswith("cd ~/hvpose && .venv/bin/python -c '")
    assert "sys.version_info >= (3, 12)" in check and "import jax, hvpose" in check and "jax.devices()" in check
    assert commands[1] == _tpu_dry_run("check", env, tmp_path)[0]


def test_tpu_run_uses_the_installed_venv(env, tmp_path) -> None:
    install = _steps(_remote(_tpu_dry_run("install", env, tmp_path)[0]))
    (clone_dir,) = [s.split()[1] for s in install if s.startswith("cd ")]
    (venv,) = [s.split()[-1] for s in install if " venv " in s]
    settings = {"CONFIG": "configs/demo.py", "WORKDIR": "gs://b/hvpose/r7", "EXTRA_FLAGS": "--config.train.steps=9"}
    run = _remote(_tpu_dry_run("run", env, tmp_path, **settings)[0])
    assert run == (f"cd {clone_dir} && nohup {venv}/bin/python -m hvpose.main --config=configs/demo.py "
                   "--workdir=gs://b/hvpose/r7 --mode=train_and_eval --config.train.steps=9 "
                   "> /tmp/hvpose-train.log 2>&1 &")


def test_tpu_all_creates_installs_checks_then_runs(env, tmp_path) -> None:
    commands = _tpu_dry_run("all", env, tmp_path, TPU_NAME="t1", ZONE="z1", ACCELERATOR="v5p-16")
    assert commands[0] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "t1", "--zone=z1",
                           "--accelerator-type=v5p-16", "--version=tpu-ubuntu2204-base"]
    remote = [_remote(words) for words in commands[1:]]
    assert len(remote) == 3
    assert "uv python install" in remote[0]
    assert remote[1].startswith("cd ~/hvpose && .venv/bin/python -c ")
    assert "nohup .venv/bin/python -m hvpose.main" in remote[2]
    assert all(words[5] == "t1" and "--zone=z1" in words for words in commands[1:])


@pytest.mark.parametrize("action", ["create", "install", "check", "run", "logs", "delete", "all"])
def test_tpu_dry_run_only_prints(env, tmp_path, action) -> None:
    commands = _tpu_dry_run(action, env, tmp_path)  # asserts gcloud was not called
    assert commands
    assert not (tmp_path / "logs").exists()


def test_tpu_unknown_action_exits_2(env, tmp_path) -> None:
    proc = _bash(TPU, "--dry-run", "launch", env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown action launch" in proc.stderr
    assert proc.stdout == "" and _calls(tmp_path) == ""


def _remote_sandbox(env: dict[str, str], tmp_path: pathlib.Path, *, pip: bool) -> dict[str, str]:
    """Stubs for what `install` runs on a worker: python3 with or without pip, curl, git; uv logs to ~/uv.log."""
    home = pathlib.Path(env["HOME"])
    bin_dir = tmp_path / "worker-bin"
    bin_dir.mkdir()
    uv_stub = (
        '#!/usr/bin/env bash\necho "uv $*" >> ~/uv.log\n'
        'if [ "$1" = venv ]; then mkdir -p "${@: -1}/bin"; touch "${@: -1}/bin/python"; fi\n'
    )
    if pip:
        python3 = ('echo "python3 $*" >> ~/calls.log\n[ "$*" = "-m pip install -q --user -U uv" ] || exit 1\n'
                   f"mkdir -p ~/.local/bin; cat > ~/.local/bin/uv <<'UV'\n{uv_stub}UV\nchmod +x ~/.local/bin/uv\n")
    else:
        python3 = 'echo "python3 $*" >> ~/calls.log\necho "/usr/bin/python3: No module named pip" >&2; exit 1\n'
    _stub(bin_dir, "python3", python3)
    # curl -LsSf -o FILE URL: writes an "installer" that puts uv into $UV_UNMANAGED_INSTALL.
    _stub(bin_dir, "curl", (
        'echo "curl $*" >> ~/calls.log\n'
        f"cat > \"$3\" <<'INSTALLER'\nmkdir -p \"$UV_UNMANAGED_INSTALL\"\n"
        f"cat > \"$UV_UNMANAGED_INSTALL/uv\" <<'UV'\n{uv_stub}UV\nchmod +x \"$UV_UNMANAGED_INSTALL/uv\"\nINSTALLER\n"))
    _stub(bin_dir, "git", 'echo "git $*" >> ~/calls.log\nmkdir -p "${@: -1}"\n')
    (home / "hvpose").mkdir()
    (home / "hvpose" / "stale").write_text("from an earlier install")
    return {**env, "PATH": f"{bin_dir}:/usr/bin:/bin"}


@pytest.mark.parametrize("pip", [True, False], ids=["with-pip", "without-pip"])
def test_tpu_remote_install_gets_uv_with_or_without_pip(env, tmp_path, pip) -> None:
    install = _remote(_tpu_dry_run("install", env, tmp_path)[0])
    worker_env = _remote_sandbox(env, tmp_path, pip=pip)
    home = pathlib.Path(env["HOME"])
    proc = subprocess.run(["bash", "-c", install], env=worker_env, cwd=home, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    calls = (home / "calls.log").read_text()
    assert ("curl" in calls) != pip, calls
    assert (home / "uv.log").read_text().splitlines() == [
        "uv --version",
        "uv python install 3.12",
        "uv venv --seed --python 3.12 .venv",
        "uv pip install -q --python .venv/bin/python -e . jax[tpu] gcsfs google-cloud-storage",
    ]
    assert (home / "hvpose" / ".venv" / "bin" / "python").exists()
    assert not (home / "hvpose" / "stale").exists()


def test_tpu_remote_install_stops_without_uv(env, tmp_path) -> None:
    install = _remote(_tpu_dry_run("install", env, tmp_path)[0])
    worker_env = _remote_sandbox(env, tmp_path, pip=False)
    _stub(pathlib.Path(worker_env["PATH"].split(":")[0]), "curl", "exit 6\n")  # no network
    home = pathlib.Path(env["HOME"])
    proc = subprocess.run(["bash", "-c", install], env=worker_env, cwd=home, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode != 0
    assert "git" not in (home / "calls.log").read_text()
    assert (home / "hvpose" / "stale").exists()


def _fake_modules(tmp_path: pathlib.Path, backend: str = "tpu", version_info: tuple | None = None) -> str:
    """A PYTHONPATH entry with stand-ins for jax and hvpose (and optionally an older sys.version_info)."""
    mods = tmp_path / f"fake-modules-{backend}-{version_info}"
    mods.mkdir()
    (mods / "jax.py").write_text(f'__version__ = "0.0"\ndef default_backend(): return "{backend}"\n'
                                 'def devices(): return ["FakeDevice(id=0)"]\n')
    (mods / "hvpose.py").write_text("")
    if version_info:  # the interpreter pretends to be an older Python
        version = ".".join(map(str, version_info[:3]))
        (mods / "sitecustomize.py").write_text(
            f"import sys\nsys.version_info = {version_info!r}\nsys.version = {version + ' (fake)'!r}\n")
    return str(mods)


def _fake_venv(where: pathlib.Path) -> pathlib.Path:
    (where / "bin").mkdir(parents=True)
    (where / "bin" / "python").symlink_to(sys.executable)
    return where


@pytest.mark.parametrize(("backend", "version_info", "message"), [
    ("tpu", None, "hvpose check: Python 3."),
    ("cpu", None, "hvpose check: jax sees no TPU (backend cpu"),
    ("tpu", (3, 10, 12, "final", 0), "hvpose check: Python 3.10.12 is older than 3.12"),
])
def test_tpu_remote_check(env, tmp_path, backend, version_info, message) -> None:
    check = _remote(_tpu_dry_run("check", env, tmp_path)[0])
    home = pathlib.Path(env["HOME"])
    _fake_venv(home / "hvpose" / ".venv")
    pythonpath = _fake_modules(tmp_path, backend, version_info)
    proc = subprocess.run(["bash", "-c", check], env={**env, "PYTHONPATH": pythonpath}, cwd=home,
                          capture_output=True, text=True, timeout=30)
    ok = backend == "tpu" and version_info is None
    assert proc.returncode == (0 if ok else 1), proc.stderr
    out = (proc.stdout if ok else proc.stderr).strip()
    assert len(out.splitlines()) == 1 and out.startswith(message), out


# ------------------------------------------------------------------------------------------------- slurm_gpu.sh

SLURM_SETTINGS = {"NODES": "3", "GPUS_PER_NODE": "2", "PARTITION": "a100", "TIME": "4:00:00",
                  "CONFIG": "configs/demo.py", "EXTRA_FLAGS": "--config.train.batch_size=48 --config.train.steps=9"}


def _slurm(env, tmp_path, *args, venv: pathlib.Path | None = None, **settings) -> subprocess.CompletedProcess:
    settings = {**SLURM_SETTINGS, "VENV": str(venv or tmp_path / "no-venv"), "WORKDIR": str(tmp_path / "wd"),
                **settings}
    return _bash(SLURM, *args, env={**env, **settings}, cwd=tmp_path)


def _job_script(stdout: str) -> str:
    return stdout.split("\n+ ", 1)[0].rstrip("\n") + "\n"


def test_slurm_dry_run_prints_job_script_from_settings(env, tmp_path) -> None:
    proc = _slurm(env, tmp_path, "--dry-run")  # no venv, no sbatch needed
    assert proc.returncode == 0, proc.stderr
    assert _calls(tmp_path) == "" and not (tmp_path / "wd").exists()
    job = _job_script(proc.stdout)
    lines = job.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    for directive in ("--nodes=3", "--ntasks-per-node=2", "--partition=a100", "--time=4:00:00",
                      "--gpus-per-task=1", "--requeue", f"--output={tmp_path}/wd/slurm-%j.log"):
        assert f"#SBATCH {directive}" in lines, directive
    py = f"{tmp_path}/no-venv/bin/python"
    srun = " ".join(job.split("srun ", 1)[1].replace("\\\n", " ").split())
    assert srun == (f'--kill-on-bad-exit=1 "{py}" -m hvpose.main --config=configs/demo.py --workdir={tmp_path}/wd '
                    "--mode=train_and_eval --config.data.worker_count=4 "
                    "--config.train.batch_size=48 --config.train.steps=9")
    # The interpreter check comes before srun, in the job and (printed, not run) for the submitting node.
    check_at = job.index(f'[ -x "{py}" ]')
    assert check_at < job.index("(3, 12)") < job.index("srun ")
    tail = proc.stdout[len(job):]
    assert "+ bash -c <the check above, on this node>" in tail and f'[ -x "{py}" ]' in tail and "(3, 12)" in tail
    assert tail.rstrip().endswith("+ sbatch <the job script above>")


def _run_job(env, tmp_path, venv: pathlib.Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    job = _job_script(_slurm(env, tmp_path, "--dry-run", venv=venv).stdout)
    (tmp_path / "job.sh").write_text(job)
    _stub(pathlib.Path(env["PATH"].split(":")[0]), "srun", f'echo "srun $*" >> {tmp_path}/calls\n')
    job_env = {**env, "PYTHONPATH": pythonpath} if pythonpath else env
    return subprocess.run(["bash", str(tmp_path / "job.sh")], env=job_env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=30)


def test_slurm_job_fails_early_without_venv(env, tmp_path) -> None:
    proc = _run_job(env, tmp_path, tmp_path / "no-venv")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"hvpose: no Python at {tmp_path}/no-venv/bin/python on "
                                   f"{os.uname().nodename}; make the venv on the shared filesystem with "
                                   "make setup (Python >= 3.12)")
    assert _calls(tmp_path) == ""


def test_slurm_job_fails_early_on_old_python(env, tmp_path) -> None:
    venv = _fake_venv(tmp_path / "old-venv")
    proc = _run_job(env, tmp_path, venv, _fake_modules(tmp_path, version_info=(3, 10, 12, "final", 0)))
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"hvpose: {venv}/bin/python is Python 3.10; hvpose needs >= 3.12 "
                                   "(re-create the venv: PYTHON=python3.12 make setup)")
    assert _calls(tmp_path) == ""


def test_slurm_job_fails_early_without_jax(env, tmp_path) -> None:
    venv = _fake_venv(tmp_path / "bare-venv")
    mods = tmp_path / "only-hvpose"
    mods.mkdir()
    (mods / "hvpose.py").write_text("")
    proc = _run_job(env, tmp_path, venv, str(mods))
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith(f"hvpose: {venv}/bin/python lacks jax ")
    assert _calls(tmp_path) == ""


def test_slurm_job_runs_srun_with_a_good_venv(env, tmp_path) -> None:
    venv = _fake_venv(tmp_path / "venv")
    proc = _run_job(env, tmp_path, venv, _fake_modules(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert _calls(tmp_path).startswith(f"srun --kill-on-bad-exit=1 {venv}/bin/python -m hvpose.main ")


def test_slurm_submit_checks_before_sbatch(env, tmp_path) -> None:
    proc = _slurm(env, tmp_path)  # no venv: fails here, before mkdir and sbatch
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith(f"hvpose: no Python at {tmp_path}/no-venv/bin/python")
    assert _calls(tmp_path) == "" and not (tmp_path / "wd").exists()


def test_slurm_submit_pipes_the_job_to_sbatch(env, tmp_path) -> None:
    venv = _fake_venv(tmp_path / "venv")
    _stub(pathlib.Path(env["PATH"].split(":")[0]), "sbatch", f"cat > {tmp_path}/submitted\n")
    proc = _slurm({**env, "PYTHONPATH": _fake_modules(tmp_path)}, tmp_path, venv=venv)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "wd").is_dir()
    assert (tmp_path / "submitted").read_text() == _job_script(proc.stdout)
