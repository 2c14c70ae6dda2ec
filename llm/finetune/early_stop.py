"""Early stopping on the held-out loss, resumable: the history is the run's metrics.jsonl."""

from __future__ import annotations

import math
from pathlib import Path

from llm.train.metrics import read_metrics


class EarlyStopping:
    """Stop once `patience` evals in a row have not lowered the best eval loss (0 = never).

    The history of a resumed run is read at the first eval, not at construction: by then the
    loop has dropped the rows of the steps it re-does, so an eval logged after the last
    checkpoint is not counted twice."""

    def __init__(self, patience: int, metrics_path: Path | None = None):
        self.patience = patience
        self.best = math.inf
        self.best_step = -1
        self.since_best = 0
        self._history = Path(metrics_path) if metrics_path is not None else None

    def _load_history(self, before: int) -> None:
        path, self._history = self._history, None
        if path is None or not path.is_file():
            return
        for record in read_metrics(path):
            step = int(record.get("step", 0))
            if record.get("eval_loss") is not None and 0 < step < before:
                self.update(step, float(record["eval_loss"]))

    def update(self, step: int, loss: float) -> bool:
        """Record an eval; True when training should stop."""
        if loss < self.best:
            self.best, self.best_step, self.since_best = loss, step, 0
        else:
            self.since_best += 1
        return self.patience > 0 and self.since_best >= self.patience

    def __call__(self, step: int, result: dict) -> bool:
        self._load_history(before=step)
        return self.update(step, float(result["eval_loss"]))
