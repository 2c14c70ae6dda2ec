"""In-training task eval: the loop scores tasks at eval.every_steps, logs them as
eval/<task>/<metric>,<filter> (metrics.jsonl and TensorBoard) and stops early on a named metric."""

from types import SimpleNamespace

import jax
import numpy as np
import pytest
from flax import nnx

from helpers import tiny_config
from llm.errors import UserError
from llm.train.loop import RunHooks, run_training
from llm.train.metrics import read_metrics
from llm.train.task_eval import task_metrics

KEY = "eval/fake/acc,none"
FAST = ("data.source=synthetic", "data.seq_len=32", "train.log_every=2", "train.measure_peak=false",
        "checkpoint.async_save=false")


class FakeTaskEval:
    """Stands in for TaskEval (llm.eval): checks it gets a model it can run, returns set scores."""

    def __init__(self, every: int, scores: list[float]):
        self.every, self.scores, self.calls = every, list(scores), []
        self.higher_is_better = {}

    def due(self, step: int, total: int) -> bool:
        return step % self.every == 0 or step == total

    def __call__(self, graphdef, params) -> dict:
        model = nnx.merge(graphdef, params)
        logits = model(np.zeros((8, 4), np.int32))  # one row per simulated device
        self.calls.append(float(jax.numpy.abs(logits).sum()))
        self.higher_is_better[KEY] = True
        return {KEY: self.scores.pop(0)}


def test_tasks_are_scored_at_their_cadence_and_logged_beside_the_eval_loss(tmp_path):
    config = tiny_config(*FAST, "train.steps=6", "train.eval_every=3", "train.eval_steps=1")
    fake = FakeTaskEval(every=4, scores=[0.25, 0.5])
    summary = run_training(config, tmp_path / "run", hooks=RunHooks(task_eval=fake))
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [(r["step"], r[KEY]) for r in records if KEY in r] == [(4, 0.25), (6, 0.5)]  # every 4 steps and the last
    assert [r["step"] for r in records if "eval_loss" in r] == [3, 6]  # the loss keeps its own cadence
    assert len(fake.calls) == 2 and fake.calls[0] != fake.calls[1]  # the current weights each time
    assert summary[KEY] == 0.5 and not summary.get("early_stopped")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars(KEY)] == [(4, 0.25), (6, 0.5)]


def test_early_stopping_on_a_task_metric(tmp_path):
    config = tiny_config(*FAST, "train.steps=10", "train.eval_every=0", "eval.patience=1",
                         "eval.early_stop_metric=fake/acc,none")
    fake = FakeTaskEval(every=2, scores=[0.5, 0.75, 0.5, 0.9, 0.9])  # auto: higher is better; step 6 is worse
    summary = run_training(config, tmp_path / "run", hooks=RunHooks(task_eval=fake))
    assert summary["early_stopped"] and summary["step"] == 6 and summary["saved_steps"] == [6]
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if KEY in r] == [2, 4, 6]


def test_a_task_metric_without_tasks_is_refused_before_training(tmp_path):
    config = tiny_config(*FAST, "train.steps=2", "eval.patience=1", "eval.early_stop_metric=fake/acc,none")
    with pytest.raises(UserError, match="no tasks run; set eval.tasks and eval.every_steps"):
        run_training(config, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_task_metrics_keys_and_directions():
    scores = SimpleNamespace(metrics={"acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.25, "f1,none": "N/A"},
                             higher_is_better={"acc": True, "acc_norm": True})
    values, higher = task_metrics([SimpleNamespace(name="t", scores=scores)])
    assert values == {"eval/t/acc,none": 0.5, "eval/t/acc_norm,none": 0.25}
    assert higher == {"eval/t/acc,none": True, "eval/t/acc_norm,none": True}
