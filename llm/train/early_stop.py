"""Early stopping on a named eval metric, resumable: the history is the run's metrics.jsonl.

The metric is `eval.early_stop_metric`: "eval_loss", any other key the run's evaluation logs
("eval_reward" in RL runs), or a task metric "<task>/<metric>,<filter>" from `eval.tasks`
(logged as "eval/<task>/<metric>,<filter>"). Whether higher is better comes from
`eval.early_stop_mode`, or with "auto" from the task's higher_is_better (lower for losses).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Mapping

import ml_collections

from llm.checkpoint.params_io import config_from_json
from llm.errors import ConfigError, UserError
from llm.train.metrics import read_metrics

log = logging.getLogger("llm")
MODES = ("auto", "max", "min")
_LOWER = ("loss", "perplexity", "bits_per_byte")  # flat eval keys where lower is better
_HIGHER = ("accuracy", "accuracies", "reward", "success", "margins", "f1")  # ... and higher


def metric_key(name: str) -> str:
    """The metrics.jsonl key of a metric name: eval_* and eval/* keys as they are, a task metric
    "<task>/<metric>[,<filter>]" as "eval/<task>/<metric>,<filter>" (filter "none" by default)."""
    name = name.strip()
    if name.startswith(("eval_", "eval/")):
        return name
    task, _, metric = name.partition("/")
    if not task or not metric:
        raise ConfigError(
            f"eval.early_stop_metric={name!r} names no eval metric; use eval_loss, an eval_ key the run logs "
            "(e.g. eval_reward) or a task metric <task>/<metric>,<filter> such as builtin_next_line/acc,none"
        )
    return f"eval/{task}/{metric if ',' in metric else metric + ',none'}"


def is_task_metric(key: str) -> bool:
    return key.startswith("eval/")


def _flat_direction(key: str) -> bool | None:
    """True when higher is better for a flat eval key, False when lower, None when unknown."""
    leaf = key[len("eval_"):].rsplit("/", 1)[-1]
    if any(word in leaf for word in _LOWER):
        return False
    if any(word in leaf for word in _HIGHER):
        return True
    return None


class EarlyStopping:
    """Stop once `patience` evals in a row have not improved the best value of `metric` (0 = never).

    The history of a resumed run is read at the first eval, not at construction: by then the
    loop has dropped the rows of the steps it re-does, so an eval logged after the last
    checkpoint is not counted twice. `directions` maps task-metric keys to higher_is_better as
    the task evaluation reports them (filled by then); mode "auto" reads it."""

    def __init__(self, patience: int, metrics_path: Path | None = None, *, metric: str = "eval_loss",
                 mode: str = "auto", directions: Mapping[str, bool] | None = None):
        if mode not in MODES:
            raise ConfigError(f"eval.early_stop_mode={mode!r} is not one of {', '.join(map(repr, MODES))}")
        self.patience = patience
        self.metric = metric_key(metric)
        self.mode = mode
        self.directions = directions if directions is not None else {}
        self.higher: bool | None = {"max": True, "min": False}.get(mode)
        self.best = math.nan
        self.best_step = -1
        self.since_best = 0
        self._history = Path(metrics_path) if metrics_path is not None else None

    def _direction(self) -> bool:
        if self.higher is None:
            higher = self.directions.get(self.metric) if is_task_metric(self.metric) else _flat_direction(self.metric)
            if higher is None:
                raise UserError(
                    f"early stopping cannot tell whether higher or lower {self.metric} is better; "
                    "set eval.early_stop_mode=max or min"
                )
            self.higher = bool(higher)
        return self.higher

    def _load_history(self, before: int) -> None:
        path, self._history = self._history, None
        if path is None or not path.is_file():
            return
        for record in read_metrics(path):
            step = int(record.get("step", 0))
            if record.get(self.metric) is not None and 0 < step < before:
                self.update(step, float(record[self.metric]))

    def _better(self, value: float) -> bool:
        if math.isnan(self.best):
            return not math.isnan(value)
        return value > self.best if self._direction() else value < self.best

    def update(self, step: int, value: float) -> bool:
        """Record an eval; True when training should stop."""
        self._direction()
        if self._better(value):
            self.best, self.best_step, self.since_best = value, step, 0
        else:
            self.since_best += 1
        return self.patience > 0 and self.since_best >= self.patience

    def __call__(self, step: int, result: dict) -> bool:
        """Asked after each eval; an eval of the other kind (task metrics vs the loss or the run's
        own evaluation, on another cadence) does not count, one of the same kind without the
        metric is a misnamed metric."""
        if self.metric not in result:
            same_kind = sorted(k for k in result if k.startswith("eval") and is_task_metric(k) == is_task_metric(self.metric)
                               and k != "eval_tokens" and "_stderr," not in k)
            if same_kind:
                raise UserError(
                    f"eval.early_stop_metric {self.metric!r} is not a metric this run logs; pick one of "
                    f"{', '.join(same_kind)}"
                )
            return False
        self._load_history(before=step)
        return self.update(step, float(result[self.metric]))

    def describe(self) -> str:
        """'eval_loss (lower is better)'."""
        return f"{self.metric} ({'higher' if self._direction() else 'lower'} is better)"


def patience_of(config: ml_collections.ConfigDict) -> int:
    """eval.patience when set, else finetune.patience (the older key, which presets set)."""
    return int(config.eval.patience) or int(config.finetune.patience)


def early_stopping(config: ml_collections.ConfigDict, metrics_path: Path | None,
                   directions: Mapping[str, bool] | None = None) -> EarlyStopping | None:
    """The run's early stopping from its config, or None when patience is 0."""
    patience = patience_of(config)
    if not patience:
        return None
    return EarlyStopping(patience, metrics_path, metric=config.eval.early_stop_metric,
                         mode=config.eval.early_stop_mode, directions=directions)


def stop_where_stopped(config: ml_collections.ConfigDict, workdir: Path) -> tuple[ml_collections.ConfigDict, bool]:
    """A run that stopped early stays stopped when its command is run again (train.steps may
    change on resume, so the finished step becomes the last one; the outputs are rewritten)."""
    path = workdir / "summary.json"
    if not path.is_file():
        return config, False
    summary = json.loads(path.read_text())
    if summary.get("early_stopped") and int(summary.get("step", 0)) < config.train.steps:
        log.info("this run stopped early at step %d; not training further", summary["step"])
        config = config_from_json(json.dumps(config.to_dict()), "config")  # a copy: the caller's stays as it was
        config.train.steps = int(summary["step"])
        return config, True
    return config, False
