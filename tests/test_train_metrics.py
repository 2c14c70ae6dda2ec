"""metrics.jsonl after a resume: rows of re-done steps replace the old ones, atomically."""

import json

from llm.train.metrics import MetricsLog, read_metrics, series


def write_rows(path, steps, **values):
    with open(path, "a") as f:
        for step in steps:
            f.write(json.dumps({"step": step, **values}) + "\n")


def test_resume_drops_rows_after_the_resumed_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_rows(path, [0], eval_loss=5.0)
    write_rows(path, range(1, 7), loss=1.0)
    with open(path, "a") as f:
        f.write('{"step": 7, "lo')  # torn by a kill -9
    log = MetricsLog(tmp_path, tensorboard=False, resume_step=4)
    for step in (5, 6):
        log.write(step, {"loss": 2.0})
    log.close()
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5, 6]
    assert series(rows, "loss") == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0), (5, 2.0), (6, 2.0)]
    assert not (tmp_path / "metrics.jsonl.tmp").exists()


def test_a_run_from_step_0_starts_a_fresh_file(tmp_path):
    write_rows(tmp_path / "metrics.jsonl", [0, 1, 2], loss=1.0)
    MetricsLog(tmp_path, tensorboard=False, resume_step=0).close()
    assert read_metrics(tmp_path / "metrics.jsonl") == []


def test_series_keeps_the_last_row_of_a_repeated_step():
    rows = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 1, "loss": 1.0}, {"step": 2, "eval_loss": 9.0}]
    assert series(rows, "loss") == [(1, 1.0), (2, 2.0)]
