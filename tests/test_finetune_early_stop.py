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
