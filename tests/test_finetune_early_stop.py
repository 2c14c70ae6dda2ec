"""Early stopping on the eval loss, with its history rebuilt from metrics.jsonl on resume."""

import json

from llm.finetune.early_stop import EarlyStopping


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
    assert (stop.best, stop.best_step, stop.since_best) == (2.0, 10, 1)  # the start-weights eval (step 0) is not a result
    assert stop(40, {"eval_loss": 2.2})
