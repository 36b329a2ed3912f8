"""Training metrics: WORKDIR/metrics.jsonl, TensorBoard events (tensorboardX, no TensorFlow), a console line.

Only process 0 writes. WORKDIR may be local or gs:// (through etils.epath; TensorBoard events on GCS need the
google-cloud-storage package). Object stores cannot append, so metrics.jsonl is rewritten whole at each log
(about 1 MB after 5,000 logged steps), keeping the lines of earlier, resumed runs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax
from etils import epath


class MetricWriter:
    """Writes one JSON object per logged step and the same scalars to TensorBoard; prints throughput and ETA."""

    def __init__(self, workdir: str, total_steps: int, unit: str = "crops",
                 shown: tuple[str, ...] = ("heatmap_loss", "offset_loss")):
        self._unit, self._shown = unit, shown  # what the throughput counts; loss terms on the progress line
        self._active = jax.process_index() == 0
        self._total = total_steps
        self._start = time.perf_counter()
        self._first_step: int | None = None
        if not self._active:
            return
        self._jsonl = epath.Path(workdir) / "metrics.jsonl"
        self._lines = self._jsonl.read_text().splitlines() if self._jsonl.exists() else []
        from tensorboardX import SummaryWriter

        self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: dict[str, float], items_per_second: float) -> None:
        if not self._active:
            return
        if self._first_step is None:
            self._first_step, self._start = step, time.perf_counter()
        record = {"step": step, **scalars, f"{self._unit}_per_second": items_per_second}
        self._lines.append(json.dumps(record))
        self._jsonl.write_text("\n".join(self._lines) + "\n")
        for key, value in record.items():
            if key != "step":
                self._tensorboard.add_scalar(key, value, step)
        self._tensorboard.flush()
        done = step - self._first_step
        elapsed = time.perf_counter() - self._start
        eta = elapsed / done * (self._total - step) if done else float("nan")
        terms = "".join(f"{name.removesuffix('_loss').replace('_', ' ')} {scalars[name]:.4f}  "
                        for name in self._shown)
        print(f"step {step:>7}/{self._total}  loss {scalars['loss']:.4f}  {terms}lr {scalars['learning_rate']:.2e}  "
              f"{items_per_second:6.1f} {self._unit}/s  ETA {_duration(eta)}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._active:
            self._tensorboard.close()


def _duration(seconds: float) -> str:
    if seconds != seconds:  # NaN: not known yet
        return "--"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def dump(path: str, payload: Any) -> None:
    """Writes JSON to a local or gs:// path."""
    epath.Path(path).write_text(json.dumps(payload, indent=2))
