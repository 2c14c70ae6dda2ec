"""Where metrics go: TensorBoard (clu metric writers), metrics.jsonl, and a loss-curve PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping


class MetricsLog:
    """Writes each event to TensorBoard and as one JSON line; only process 0 writes."""

    def __init__(self, workdir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.workdir = Path(workdir)
        self.enabled = enabled
        self._writer = None
        self._jsonl = None
        if not enabled:
            return
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


def plot_loss_curve(metrics_path: str | Path, out_path: str | Path) -> Path:
    """Train and eval loss against step, from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in records if r.get("eval_loss") is not None]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path)
    plt.close(fig)
    return out_path
