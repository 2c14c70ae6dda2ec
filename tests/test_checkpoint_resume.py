"""Fault tolerance of `llm train` as a process: kill -9 at random moments (also during async
saves) and SIGTERM; the resumed loss trajectory equals the uninterrupted one bit for bit."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ARGS = [
    "--config", "configs/tiny.py", "--config.train.steps=16", "--config.train.log_every=1",
    "--config.train.eval_every=0", "--config.data.seq_len=64", "--config.checkpoint.every_steps=3",
    "--config.checkpoint.async_save=true", "--config.data.num_workers=0",
]


def start(workdir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.Popen(
        [sys.executable, "-m", "llm.cli.main", "train", "--workdir", str(workdir), *ARGS],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )


def losses(workdir: Path) -> dict[int, float]:
    """Per-step training loss; a step logged again after a restart overrides the first record."""
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]
    return out


def logged_steps(workdir: Path) -> int:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    return max((json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()), default=0)


def wait_for_step(proc: subprocess.Popen, workdir: Path, step: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while logged_steps(workdir) < step:
        if proc.poll() is not None or time.time() > deadline:
            raise AssertionError(f"process ended or timed out before step {step}: {proc.stdout.read()[-3000:]}")
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_minus_9_then_resume_is_bit_exact(tmp_path):
    reference = tmp_path / "reference"
    proc = start(reference)
    assert proc.wait(timeout=600) == 0, proc.stdout.read()[-3000:]
    expected = losses(reference)
    assert sorted(expected) == list(range(1, 17))

    rng = random.Random(1234)
    victim = tmp_path / "victim"
    kills = 0
    for target in (4, 7, 12):  # steps 6 and 12 save asynchronously: kills land near or inside saves
        proc = start(victim)
        wait_for_step(proc, victim, target)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    proc = start(victim)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output[-3000:]
    assert "resumed from" in output
    assert kills == 3
    assert losses(victim) == expected  # exact float equality, every step


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_exits_zero(tmp_path):
    workdir = tmp_path / "w"
    proc = start(workdir)
    wait_for_step(proc, workdir, 4)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output[-3000:]
    line = next(l for l in output.splitlines() if "preempted: saved step" in l)
    step = int(line.split("preempted: saved step ")[1].split()[0])
    assert step >= 4
    assert (workdir / "checkpoints" / str(step)).is_dir()
    proc = start(workdir)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output[-3000:]
    assert f"resumed from {workdir.absolute() / 'checkpoints' / str(step)} (step {step})" in output
