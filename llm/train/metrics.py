"""Where metrics go: TensorBoard (clu metric writers), metrics.jsonl, and a loss-curve PNG.

metrics.jsonl holds one row per step and kind: a run resumed from an earlier checkpoint first
drops the rows of the steps it is about to re-do, so readers never see a step twice.
"""

from __future__ import annotations

import json
import math
import os
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
            # clu.metric_writers imports TensorFlow; only pay for it when a run writes metrics.
            from clu import metric_writers

            self._writer = metric_writers.SummaryWriter(str(self.workdir / "tensorboard"))

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if not isinstance(v, str) else v) for k, v in values.items()}
        record = {"step": int(step), **{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in clean.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._writer is not None:
            self._writer.write_scalars(int(step), {k: v for k, v in clean.items() if isinstance(v, float)})

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        if self.enabled and self._writer is not None:
            self._writer.write_hparams(dict(hparams))

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


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
