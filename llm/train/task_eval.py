"""lm-eval tasks scored on the weights being trained, every `eval.every_steps` steps.

The tasks are loaded and the scoring functions compiled once per run; each eval swaps in the
current weights (EvalModel.with_params). Metrics are logged as "eval/<task>/<metric>,<filter>"
(lm-eval's keys under the task's name), the TensorBoard tags too. llm.eval is imported lazily:
a run without eval.tasks never loads it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import ml_collections

log = logging.getLogger("llm")

PREFIX = "eval/"
TASKS_DIR = "eval_tasks"  # under the workdir: the built-in suite's data and YAMLs


def task_metrics(results: list) -> tuple[dict[str, float], dict[str, bool]]:
    """(metrics.jsonl values, higher_is_better) keyed "eval/<task>/<metric>,<filter>"; stderr
    and non-numeric entries (lm-eval's "N/A") are left out."""
    values: dict[str, float] = {}
    higher: dict[str, bool] = {}
    for result in results:
        for key, value in result.scores.metrics.items():
            metric = key.split(",", 1)[0]
            if metric.endswith("_stderr") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            full = f"{PREFIX}{result.name}/{key}"
            values[full] = float(value)
            if metric in result.scores.higher_is_better:
                higher[full] = bool(result.scores.higher_is_better[metric])
    return values, higher


class TaskEval:
    """Scores `eval.tasks` on given weights; `higher_is_better` fills in at the first eval (early
    stopping's "auto" mode reads it)."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path):
        self.config = config
        self.workdir = Path(workdir)
        self.every = int(config.eval.every_steps)
        self.higher_is_better: dict[str, bool] = {}
        self._tasks = self._load_tasks()  # now, so a bad task file stops the run before its first step
        self._model = None

    def due(self, step: int, total: int) -> bool:
        return bool(self.every) and (step % self.every == 0 or step == total)

    def _load_tasks(self) -> list:
        from llm.eval.runner import load_tasks, resolve_task_paths

        builtin_dir = self.workdir / TASKS_DIR
        first = jax.process_index() == 0
        if first:
            paths = resolve_task_paths(self.config.eval.tasks, builtin_dir)
        if jax.process_count() > 1:  # process 0 writes the built-in suite, the others then read it
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("llm: eval tasks written")
        if not first:
            paths = resolve_task_paths(self.config.eval.tasks, builtin_dir, write_builtin=False)
        shots = int(self.config.eval.num_fewshot)
        tasks = load_tasks(paths, num_fewshot=None if shots < 0 else shots)
        log.info("eval tasks every %d steps: %s", self.every, ", ".join(t.name for t in tasks))
        return tasks

    def _eval_model(self, graphdef, params):
        if self._model is not None:
            return self._model.with_params(params)
        from llm.data.tokenizer import load_tokenizer
        from llm.eval.model import EvalModel

        tokenizer = load_tokenizer(self.config.data.tokenizer)
        return EvalModel(graphdef, params, self.config, tokenizer, batch_size=int(self.config.eval.batch_size))

    def __call__(self, graphdef, params) -> dict[str, float]:
        """Score the tasks on `params` (the whole tree `graphdef` merges with)."""
        from llm.eval.runner import evaluate_tasks

        self._model = self._eval_model(graphdef, params)
        limit = float(self.config.eval.limit)
        results = evaluate_tasks(self._model, self._tasks, limit=None if limit == 0 else (int(limit) if limit >= 1 else limit))
        values, higher = task_metrics(results)
        self.higher_is_better.update(higher)
        return values
