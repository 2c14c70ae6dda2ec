"""Where metrics go: TensorBoard event files, metrics.jsonl, and a loss-curve PNG.

The events are written with TensorBoard's own writer, not clu.metric_writers: clu's imports
TensorFlow, which added ~540 MiB to every training process's peak memory (measured on `llm dpo`
with configs/dpo_lora_tiny.py) for the same scalars.

metrics.jsonl holds one row per step and kind: a run resumed from an earlier checkpoint first
drops the rows of the steps it is about to re-do, so readers never see a step twice.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Mapping


class MetricsLog:
    """Writes each event to TensorBoard and as one JSON line; only process 0 writes."""

    def __init__(self, workdir: str | Path, enabled: bool = True, tensorboard: bool = True, resume_step: int | None = None):
        """`resume_step`: the step the run starts from; later rows are dropped (0: a fresh file)."""
        self.workdir = Path(workdir)
        self.enabled = enabled
        self._writer = None
        self._jsonl = None
        if not enabled:
            return
        if resume_step is not None:
            drop_rows_after(self.workdir / "metrics.jsonl", resume_step)
        self._jsonl = open(self.workdir / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            self._writer = ScalarWriter(self.workdir / "tensorboard")

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if not isinstance(v, str) else v) for k, v in values.items()}
        record = {"step": int(step), **{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in clean.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._writer is not None:
            self._writer.write_scalars(int(step), {k: v for k, v in clean.items() if isinstance(v, float)})

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


class ScalarWriter:
    """Scalars as a TensorBoard event file (`events.out.tfevents.*`, TFRecord framing) written
    with TensorBoard's record writer and protos; unlike its EventFileWriter (tf.io.gfile), nothing
    here imports TensorFlow."""

    def __init__(self, logdir: str | Path):
        from tensorboard.summary.writer.record_writer import RecordWriter

        Path(logdir).mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}"
        self._records = RecordWriter(open(Path(logdir) / name, "wb"))
        self._write(file_version="brain.Event:2")
        self.flush()

    def _write(self, **fields) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self._records.write(Event(wall_time=time.time(), **fields).SerializeToString())

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._write(step=step, summary=Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in scalars.items()]))
        self.flush()

    def flush(self) -> None:
        self._records.flush()

    def close(self) -> None:
        self._records.close()


def read_metrics(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def drop_rows_after(path: Path, step: int) -> None:
    """Keep the rows of steps <= `step` (none when `step` is 0: a run from scratch re-does
    everything); atomic, so a crash leaves the old file or the new one, never half of it."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    keep = [line for line in lines if line.strip() and step > 0 and _row_step(line) <= step]
    if len(keep) == len(lines):
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    os.replace(tmp, path)


def _row_step(line: str) -> float:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf  # a torn last line from a killed run: drop it


def series(records: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of `key`, one per step, the last row winning (files written before
    rows were de-duplicated on resume may repeat steps)."""
    by_step = {r["step"]: r[key] for r in records if r.get(key) is not None}
    return sorted(by_step.items())


def plot_loss_curve(metrics_path: str | Path, out_path: str | Path) -> Path:
    """Train and eval loss against step, from metrics.jsonl."""
    return plot_metric(metrics_path, out_path, "loss", "loss (nats/token)")


def plot_metric(metrics_path: str | Path, out_path: str | Path, key: str, ylabel: str) -> Path:
    """A training metric and its held-out `eval_` twin against step, from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train, evals = series(records, key), series(records, f"eval_{key}")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label=f"train {key}")
    if evals:
        ax.plot(*zip(*evals), "o-", label=f"eval {key}")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path)
    plt.close(fig)
    return out_path
