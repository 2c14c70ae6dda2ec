"""`llm train` on a workdir whose latest checkpoint was damaged after it was written: the run
falls back, moves the damaged step aside (kept, invisible to Orbax) and saves that step again;
asking for the damaged step by number is one line naming the path, the cause and the fix."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ARGS = ["--config", "configs/tiny.py", "--config.data.source=synthetic", "--config.data.seq_len=32",
        "--config.train.log_every=1", "--config.train.eval_every=0", "--config.train.measure_peak=false",
        "--config.checkpoint.every_steps=2", "--config.checkpoint.keep=2", "--config.checkpoint.async_save=false"]


def llm_train(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llm.cli.main", "train", "--workdir", str(workdir), *ARGS, *extra],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )


def step_dirs(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def truncate_largest_file(step_dir: Path) -> Path:
    files = sorted((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim = files[-1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    return victim


@pytest.fixture(scope="module")
def damaged_run(tmp_path_factory) -> Path:
    """A 6-step run (checkpoints 4 and 6 kept) whose step 6 was truncated afterwards."""
    workdir = tmp_path_factory.mktemp("damaged") / "w"
    out = llm_train(workdir, "--config.train.steps=6")
    assert out.returncode == 0, out.stderr[-3000:]
    assert step_dirs(workdir) == [4, 6]
    truncate_largest_file(workdir / "checkpoints" / "6")
    return workdir


@pytest.mark.slow
def test_damaged_latest_is_moved_aside_and_saved_again(damaged_run, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(damaged_run, workdir)
    out = llm_train(workdir, "--config.train.steps=8")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "checkpoints/6 is damaged" in out.stderr and "resumed from" in out.stderr
    aside = list((workdir / "checkpoints").glob("damaged-6-*"))
    assert len(aside) == 1 and (aside[0] / "state").is_dir()  # kept for inspection, never deleted
    assert f"to {aside[0]}; step 6 will be saved again" in out.stderr
    # Step 6 was saved again, and the damaged copy did not count towards keep=2.
    assert step_dirs(workdir) == [6, 8]
    # The re-done steps 5 and 6 replaced their rows in metrics.jsonl instead of repeating them.
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 9))
    out = llm_train(workdir, "--config.train.steps=8", "--config.checkpoint.restore_step=6")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "is damaged" not in out.stderr and f"resumed from {workdir.absolute() / 'checkpoints' / '6'} (step 6)" in out.stderr


@pytest.mark.slow
def test_restore_step_at_a_damaged_checkpoint_is_one_line_with_the_fix(damaged_run, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(damaged_run, workdir)
    out = llm_train(workdir, "--config.train.steps=8", "--config.checkpoint.restore_step=6")
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    line = errors[0]
    assert f"checkpoint {workdir.absolute() / 'checkpoints' / '6'} is damaged" in line
    assert "TensorStore({" not in line and "truncated" in line
    assert "other steps: [4]" in line and "--config.checkpoint.restore_step" in line and "or remove" in line
    assert step_dirs(workdir) == [4, 6]  # an explicit request changes nothing on disk
