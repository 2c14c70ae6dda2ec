"""In-training task eval: the loop scores tasks at eval.every_steps, logs them as
eval/<task>/<metric>,<filter> (metrics.jsonl and TensorBoard) and stops early on a named metric."""

import json
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
    again = run_training(config, tmp_path / "run", hooks=RunHooks(task_eval=FakeTaskEval(every=2, scores=[0.1] * 5)))
    assert again["early_stopped"] and again["step"] == 6  # the same command again: stays stopped, trains no further
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if KEY in r] == [2, 4, 6]


def test_a_task_metric_without_tasks_is_refused_before_training(tmp_path):
    config = tiny_config(*FAST, "train.steps=2", "eval.patience=1", "eval.early_stop_metric=fake/acc,none")
    with pytest.raises(UserError, match="no tasks run; set eval.tasks and eval.every_steps"):
        run_training(config, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_a_missing_task_file_stops_the_run_before_its_first_step(tmp_path):
    config = tiny_config(*FAST, "train.steps=2", f"eval.tasks={tmp_path / 'nope.yaml'}", "eval.every_steps=1")
    with pytest.raises(UserError, match="nope.yaml' is not a YAML file"):
        run_training(config, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or not read_metrics(tmp_path / "run" / "metrics.jsonl")


def test_task_metrics_keys_and_directions():
    scores = SimpleNamespace(metrics={"acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.25, "f1,none": "N/A"},
                             higher_is_better={"acc": True, "acc_norm": True})
    values, higher = task_metrics([SimpleNamespace(name="t", scores=scores)])
    assert values == {"eval/t/acc,none": 0.5, "eval/t/acc_norm,none": 0.25}
    assert higher == {"eval/t/acc,none": True, "eval/t/acc_norm,none": True}


TEXT = "The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs."


def write_tasks(directory, text: str = TEXT) -> tuple:
    """Two lm-eval task files over local JSON data on `text`: which word follows (multiple
    choice) and the log-likelihood of the next word (perplexity; the byte tokenizer has no BOS
    for rolling windows)."""
    directory.mkdir(parents=True, exist_ok=True)
    words = text.split()
    docs = [{"context": " ".join(words[:i]), "choices": [words[i], words[(i + 3) % len(words)]], "label": 0} for i in range(2, 8)]
    (directory / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    head = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {directory / 'docs.jsonl'}\ntest_split: test\n"
    (directory / "mc.yaml").write_text(
        f"task: tiny_mc\n{head}output_type: multiple_choice\ndoc_to_text: '{{{{context}}}}'\ndoc_to_choice: choices\n"
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n")
    (directory / "next.yaml").write_text(
        f"task: tiny_next\n{head}output_type: loglikelihood\ndoc_to_text: '{{{{context}}}}'\n"
        "doc_to_target: '{{choices[0]}}'\nmetric_list:\n  - metric: perplexity\n  - metric: acc\n")
    return directory / "mc.yaml", directory / "next.yaml"


def test_llm_eval_tasks_during_training_and_early_stopping_on_one(tmp_path):
    """tiny memorises TEXT: the perplexity of its next words falls at every eval, so watching it
    with mode=max (higher is better) stops at the second eval with patience 1."""
    mc, nxt = write_tasks(tmp_path / "tasks")
    data = tmp_path / "repeat.jsonl"
    data.write_text("".join(json.dumps({"text": TEXT}) + "\n" for _ in range(64)))
    config = tiny_config(
        "data.source=jsonl", f"data.path={data}", f"data.eval_path={data}", "data.seq_len=64", "train.steps=12",
        "train.log_every=3", "train.eval_every=0", "train.measure_peak=false", "checkpoint.async_save=false",
        f"eval.tasks={mc},{nxt}", "eval.every_steps=3", "eval.batch_size=8", "eval.patience=1",
        "eval.early_stop_metric=tiny_next/perplexity", "eval.early_stop_mode=max",
    )
    summary = run_training(config, tmp_path / "run")
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "eval/tiny_next/perplexity,none" in r]
    assert [r["step"] for r in rows] == [3, 6]
    assert {"eval/tiny_mc/acc,none", "eval/tiny_next/acc,none"} <= set(rows[0])
    assert not any("stderr" in key for key in rows[0])
    assert rows[1]["eval/tiny_next/perplexity,none"] < rows[0]["eval/tiny_next/perplexity,none"]
    assert summary["early_stopped"] and summary["step"] == 6
    assert "eval/tiny_next/perplexity,none (higher is better) stopped improving" in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.slow
def test_lora_sft_scores_tasks_on_the_adapted_weights(tmp_path_factory, tmp_path):
    """`llm sft` with LoRA: the task metrics logged in training are those of the adapted model
    (the step-4 score equals `llm eval`'s on the run's merged weights), not of the frozen base."""
    from finetune_fixtures import FAST, corpus_and_start, llm_session
    from llm.eval.model import load_eval_model
    from llm.eval.runner import evaluate_tasks, load_tasks

    manifest, pre = corpus_and_start(tmp_path_factory)
    mc, nxt = write_tasks(tmp_path / "tasks")
    run = tmp_path / "lora"
    [(code, err)] = llm_session(["sft", "--config", "configs/sft_lora_tiny.py", "--workdir", str(run), "--init-from", str(pre),
                                 "--data", str(manifest), *FAST, "--config.train.steps=4", "--config.train.eval_every=2",
                                 "--config.train.eval_steps=1", "--config.optim.lr=1e-2", f"--config.eval.tasks={mc},{nxt}",
                                 "--config.eval.every_steps=2"])
    assert code == 0, err[-3000:]
    key = "eval/tiny_next/perplexity,none"
    rows = {r["step"]: r for r in read_metrics(run / "metrics.jsonl") if key in r}
    assert sorted(rows) == [0, 2, 4] and "eval_loss" in rows[2]  # the start weights, then every 2 steps beside the loss
    assert rows[4][key] != rows[0][key]
    [result] = evaluate_tasks(load_eval_model(run), load_tasks([nxt]))
    assert abs(result.scores.metrics["perplexity,none"] - rows[4][key]) <= 1e-4 * rows[4][key]
