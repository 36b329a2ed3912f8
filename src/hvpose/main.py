"""hvpose's entry point: train and/or evaluate the keypoint network or the person detector (`config.task`).

    python -m hvpose.main --config=configs/coco.py[:VARIANT] --workdir=DIR [--mode=train|eval|train_and_eval]
        [--config.KEY=VALUE ...]

Running the same command again resumes from the newest checkpoint in DIR/checkpoints. On several processes
(a TPU pod slice, a multi-node GPU job) it calls `jax.distributed.initialize()` first.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py), optionally with :VARIANT.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and evaluation output (local or gs://).")
flags.DEFINE_enum("mode", "train_and_eval", ["train", "eval", "train_and_eval"], "What to run.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS

def _multi_process() -> bool:
    """Whether the environment says this is one of several processes (jax.distributed's auto-detection)."""
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if "," in hosts:
        return True
    for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if int(os.environ.get(name, "1") or 1) > 1:
            return True
    return bool(os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"))


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with config problems (unknown key, bad value, bad variant) as one line, not a traceback."""
    try:
        return FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
        context = error.__context__
        if isinstance(context, KeyError) and context.args:  # an override of a key the config does not have
            message = f"unknown config key {context.args[0]}"
        else:
            message = str(error)
            if "Traceback (most recent call last)" in message:  # a config file raised: keep its own last line
                head = message.split("Traceback")[0].strip()
                message = f"{head} {message.strip().splitlines()[-1].strip()}"
    print("hvpose: error: " + " ".join(line.strip() for line in message.splitlines() if line.strip()),
          file=sys.stderr)
    sys.exit(2)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax and TFDS log every step at INFO
    from hvpose.allocator import reuse_freed_memory
    from hvpose.errors import ConfigError

    try:
        reuse_freed_memory()  # before JAX starts its threads: CPU steps reuse pages instead of faulting in new ones
    except ConfigError as error:
        print(f"hvpose: error: {error}", file=sys.stderr)
        sys.exit(2)
    import jax

    if _multi_process():
        jax.distributed.initialize()
    from hvpose import evaluate, train
    from hvpose.errors import USER_ERRORS

    config, workdir = FLAGS.config, FLAGS.workdir
    if config.get("task", "keypoints") == "detection":
        from hvpose import detector

        evaluate_checkpoint, evaluate_variables = detector.evaluate_detector_checkpoint, detector.evaluate_detector
    else:
        evaluate_checkpoint, evaluate_variables = evaluate.evaluate_checkpoint, evaluate.evaluate
    try:
        if FLAGS.mode == "eval":
            evaluate_checkpoint(config, workdir)
        else:
            evaluate_fn = None
            if FLAGS.mode == "train_and_eval":
                def evaluate_fn(variables, step):
                    return evaluate_variables(config, workdir, variables, step)
            train.train(config, workdir, evaluate_fn)
    except USER_ERRORS as error:
        print(f"hvpose: error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
