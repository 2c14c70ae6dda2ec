"""Early stopping on a named eval metric (eval loss by default), with its history rebuilt from metrics.jsonl on resume."""

import json

import pytest

from llm.config.base import base_config
from llm.config.validate import validate_config
from llm.errors import ConfigError, UserError
from llm.train.early_stop import EarlyStopping, early_stopping


def test_stops_after_patience_evals_without_improvement(tmp_path):
    stop = EarlyStopping(patience=2)
    assert [stop(s, {"eval_loss": v}) for s, v in ((10, 3.0), (20, 2.5), (30, 2.6), (40, 2.4), (50, 2.45), (60, 2.5))] == [
        False, False, False, False, False, True,
    ]
    assert (stop.best, stop.best_step) == (2.4, 40)
    assert not any(EarlyStopping(patience=0)(s, {"eval_loss": 5.0}) for s in range(10))


def test_history_comes_back_from_metrics_jsonl(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"step": 0, "eval_loss": 1.0}, {"step": 10, "loss": 3.0}, {"step": 10, "eval_loss": 2.0},
               {"step": 20, "eval_loss": 2.1}, {"step": 30, "eval_loss": None}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    stop = EarlyStopping(patience=2, metrics_path=path)
    assert stop(40, {"eval_loss": 2.2})  # 20 and 40 did not improve on step 10's 2.0
    assert (stop.best, stop.best_step, stop.since_best) == (2.0, 10, 2)  # the start-weights eval (step 0) is not a result


def test_history_is_read_at_the_first_eval_after_the_loop_dropped_redone_rows(tmp_path):
    """A resumed run drops rows after its checkpoint before its first eval; the history must be
    read after that (and the row the loop writes for this eval just before asking is not history)."""
    from llm.train.metrics import drop_rows_after

    path = tmp_path / "metrics.jsonl"
    records = [{"step": 10, "eval_loss": 2.0}, {"step": 20, "eval_loss": 2.1}, {"step": 30, "eval_loss": 2.2}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 40, "eval_')  # killed mid-write
    stop = EarlyStopping(patience=2, metrics_path=path)  # built before the loop resumes from step 20
    drop_rows_after(path, 20)
    with path.open("a") as f:
        f.write(json.dumps({"step": 30, "eval_loss": 1.5}) + "\n")  # the loop logs the re-done eval, then asks
    assert not stop(30, {"eval_loss": 1.5})
    assert (stop.best, stop.best_step, stop.since_best) == (1.5, 30, 0)


def test_a_task_metric_higher_is_better_from_the_task(tmp_path):
    directions = {}
    stop = EarlyStopping(patience=1, metric="builtin_next_line/acc", directions=directions)
    assert stop.metric == "eval/builtin_next_line/acc,none"
    directions["eval/builtin_next_line/acc,none"] = True  # the task eval fills this at its first eval
    assert not stop(10, {"eval/builtin_next_line/acc,none": 0.3})
    assert not stop(20, {"eval/builtin_next_line/acc,none": 0.5})  # higher: an improvement
    assert not stop(25, {"eval_loss": 9.0})  # another kind of eval (other cadence): not counted
    assert stop(30, {"eval/builtin_next_line/acc,none": 0.4})
    assert (stop.best, stop.best_step) == (0.5, 20)


def test_mode_overrides_the_direction_and_flat_keys_know_theirs():
    maximize = EarlyStopping(patience=1, metric="eval_loss", mode="max")
    assert not maximize(1, {"eval_loss": 2.0}) and not maximize(2, {"eval_loss": 3.0}) and maximize(3, {"eval_loss": 2.5})
    reward = EarlyStopping(patience=1, metric="eval_reward")  # auto: a reward is better higher
    assert not reward(1, {"eval_reward": 0.1}) and not reward(2, {"eval_reward": 0.2}) and reward(3, {"eval_reward": 0.1})
    with pytest.raises(UserError, match="early_stop_mode=max or min"):
        EarlyStopping(patience=1, metric="eval_completion_length")(1, {"eval_completion_length": 3.0})
    with pytest.raises(UserError, match="early_stop_mode=max or min"):  # a task that did not say
        EarlyStopping(patience=1, metric="t/m,none", directions={})(1, {"eval/t/m,none": 3.0})


def test_a_misnamed_metric_fails_at_the_first_eval_of_its_kind():
    stop = EarlyStopping(patience=1, metric="next_line/acc,none")
    with pytest.raises(UserError, match=r"eval/builtin_next_line/acc,none"):
        stop(10, {"eval/builtin_next_line/acc,none": 0.3, "eval/builtin_next_line/acc_norm,none": 0.3})
    with pytest.raises(UserError, match="eval_reward"):  # an RL run logs no eval_loss
        EarlyStopping(patience=1)(10, {"eval_reward": 0.3, "eval_success": 0.1})
    with pytest.raises(ConfigError, match="names no eval metric"):
        EarlyStopping(patience=1, metric="acc")


def test_task_metric_history_comes_back_from_metrics_jsonl(tmp_path):
    path = tmp_path / "metrics.jsonl"
    key = "eval/t/exact_match,take_first"
    records = [{"step": 0, key: 0.9}, {"step": 10, key: 0.5}, {"step": 10, "eval_loss": 2.0}, {"step": 20, key: 0.4}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    stop = EarlyStopping(patience=2, metrics_path=path, metric="t/exact_match,take_first", mode="auto", directions={key: True})
    assert stop(30, {key: 0.45})  # 20 and 30 are below step 10's 0.5
    assert (stop.best, stop.best_step, stop.since_best) == (0.5, 10, 2)


def test_patience_from_eval_or_finetune_and_the_config_checks():
    config = base_config()
    assert early_stopping(config, None) is None
    config.finetune.patience = 3  # the older key keeps working: eval loss, lower is better
    stop = early_stopping(config, None)
    assert (stop.patience, stop.metric, stop.mode) == (3, "eval_loss", "auto")
    config.eval.patience = 2  # replaces finetune.patience (presets set it)
    config.eval.early_stop_metric, config.eval.early_stop_mode = "builtin_perplexity/word_perplexity,none", "min"
    stop = early_stopping(config, None)
    assert (stop.patience, stop.metric, stop.higher) == (2, "eval/builtin_perplexity/word_perplexity,none", False)
    validate_config(config)
    for key, value, match in (("tasks", "builtin", "every_steps=0"), ("every_steps", 5, "eval.tasks is empty"),
                              ("early_stop_mode", "up", "early_stop_mode"), ("num_fewshot", -2, "num_fewshot")):
        bad = base_config()
        bad.eval[key] = value
        with pytest.raises(ConfigError, match=match):
            validate_config(bad)
