"""The training loop end to end: memorisation, metrics files, and the `llm train` command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import tiny_config
from llm.train.loop import run_training
from llm.train.metrics import read_metrics

TEXT = "The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs."


def repeated_text(tmp_path: Path) -> Path:
    path = tmp_path / "repeat.jsonl"
    path.write_text("".join(json.dumps({"text": TEXT}) + "\n" for _ in range(64)))
    return path


def test_tiny_memorises_a_repeated_text(tmp_path):
    config = tiny_config(
        "train.steps=60", "train.log_every=10", "train.eval_every=30", "data.source=jsonl",
        f"data.path={repeated_text(tmp_path)}", f"data.eval_path={repeated_text(tmp_path)}",
    )
    summary = run_training(config, tmp_path / "run")
    assert summary["loss"] < 0.1
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in train] == [10, 20, 30, 40, 50, 60]
    assert train[0]["loss"] > 1.0 and {"tokens_per_s", "mfu", "grad_norm", "learning_rate"} <= set(train[-1])
    assert [r["step"] for r in evals] == [30, 60] and evals[-1]["eval_loss"] < 0.1


def llm_cli(*args, cwd=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "llm.cli.main", *args], capture_output=True, text=True, timeout=timeout,
        cwd=cwd or os.getcwd(), env={**os.environ, "PYTHONPATH": os.getcwd()},
    )


def test_llm_train_writes_tensorboard_metrics_and_plot(tmp_path):
    out = llm_cli("train", "--config", "configs/tiny.py", "--workdir", str(tmp_path / "w"),
                  "--config.train.steps=6", "--config.train.log_every=2", "--config.train.eval_every=3",
                  "--config.train.eval_steps=1", "--config.data.seq_len=64")
    assert out.returncode == 0, out.stderr[-2000:]
    workdir = tmp_path / "w"
    records = read_metrics(workdir / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]
    assert [r["step"] for r in records if "eval_loss" in r] == [3, 6]
    assert (workdir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(workdir / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()
    scalars = set(tags.get("scalars", [])) | set(tags.get("tensors", []))
    assert {"loss", "eval_loss", "learning_rate"} <= scalars
    assert "precision: params float32, compute float32" in (workdir / "train.log").read_text()


BAD_INPUTS = [
    (["--config.train.stepz=3"], "unknown config key 'train.stepz'"),
    (["--config.mesh.data=3"], "but 8 are available"),
    (["--config.data.batch_size=6"], "data.batch_size=6 is not divisible by the data-parallel size 8"),
    (["--config.data.seq_len=4096"], "data.seq_len=4096 exceeds model.max_seq_len=256"),
    (["--config.mesh.tensor=8", "--config.mesh.data=1"], "cannot be split over mesh axes"),
]


@pytest.mark.parametrize("extra,message", BAD_INPUTS, ids=[m.split()[0] for _, m in BAD_INPUTS])
def test_bad_input_is_one_line_and_nonzero(tmp_path, extra, message):
    out = llm_cli("train", "--config", "configs/tiny.py", "--workdir", str(tmp_path / "w"), *extra)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert len([line for line in out.stderr.splitlines() if "error:" in line]) == 1


def test_workdir_with_a_different_run_is_refused_unless_overwritten(tmp_path):
    workdir = tmp_path / "w"
    base = ["train", "--config", "configs/tiny.py", "--workdir", str(workdir), "--config.train.steps=1",
            "--config.train.eval_every=0", "--config.data.seq_len=32"]
    assert llm_cli(*base).returncode == 0
    out = llm_cli(*base, "--config.model.d_model=64")
    assert out.returncode == 2 and "holds a run with a different config (model.d_model: 128 -> 64)" in out.stderr
    out = llm_cli(*base, "--config.model.d_model=64", "--overwrite")
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((workdir / "config.json").read_text())["model"]["d_model"] == 64
    assert list(workdir.glob("replaced-*/config.json"))  # the old run was moved aside, not deleted
