"""Early stopping on the held-out loss, resumable: the history is the run's metrics.jsonl."""

from __future__ import annotations

import json
import math
from pathlib import Path


class EarlyStopping:
    """Stop once `patience` evals in a row have not lowered the best eval loss (0 = never)."""

    def __init__(self, patience: int, metrics_path: Path | None = None):
        self.patience = patience
        self.best = math.inf
        self.best_step = -1
        self.since_best = 0
        if metrics_path is not None and Path(metrics_path).is_file():
            for line in Path(metrics_path).read_text().splitlines():
                record = json.loads(line)
                if record.get("eval_loss") is not None and int(record.get("step", 0)) > 0:
                    self.update(int(record["step"]), float(record["eval_loss"]))

    def update(self, step: int, loss: float) -> bool:
        """Record an eval; True when training should stop."""
        if loss < self.best:
            self.best, self.best_step, self.since_best = loss, step, 0
        else:
            self.since_best += 1
        return self.patience > 0 and self.since_best >= self.patience

    def __call__(self, step: int, result: dict) -> bool:
        return self.update(step, float(result["eval_loss"]))
