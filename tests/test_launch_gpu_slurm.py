"""launch/gpu_slurm.sbatch: the SLURM header asks for one task per node with all its GPUs,
requeue and a SIGTERM before the time limit; the dry run prints the srun line; inside a
(faked) job srun gets the command with the venv on PATH."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch" / "gpu_slurm.sbatch"
TRAIN = ["llm", "train", "--config", "configs/llama3_8b.py", "--workdir", "/shared/runs/8b"]


def run(args, env=None):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


def test_sbatch_header():
    header = [l for l in SCRIPT.read_text().splitlines() if l.startswith("#SBATCH")]
    for option in ("--ntasks-per-node=1", "--gpus-per-node=8", "--requeue", "--signal=TERM@300", "--exclusive"):
        assert f"#SBATCH {option}" in header


def test_dry_run_prints_srun():
    out = run(["--dry-run", "--", *TRAIN])
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "srun --ntasks-per-node=1 --kill-on-bad-exit=1 --export=ALL llm train --config configs/llama3_8b.py --workdir /shared/runs/8b"
    ]


def test_outside_slurm_is_a_one_line_error():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    out = run(["--", *TRAIN], env)
    assert out.returncode == 2 and "not inside a SLURM job" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_inside_a_job_srun_runs_the_command_with_the_venv(tmp_path):
    bin_dir, venv_bin = tmp_path / "bin", tmp_path / "venv" / "bin"
    bin_dir.mkdir()
    venv_bin.mkdir(parents=True)
    (venv_bin / "llm").write_text("#!/bin/sh\n")
    (venv_bin / "llm").chmod(0o755)
    log = tmp_path / "srun.log"
    (bin_dir / "srun").write_text(f'#!/usr/bin/env bash\necho "$*" > {log}\necho "$PATH" >> {log}\necho "$XLA_FLAGS" >> {log}\nexit 7\n')
    (bin_dir / "srun").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="42", SLURM_NNODES="2",
               SLURM_JOB_NODELIST="gpu[1-2]", SLURM_SUBMIT_DIR=str(REPO))
    out = run(["--venv", str(tmp_path / "venv"), "--", *TRAIN], env)
    assert out.returncode == 7  # srun's exit code is the job's
    args, path, xla_flags = log.read_text().splitlines()
    assert args == "--ntasks-per-node=1 --kill-on-bad-exit=1 --export=ALL " + " ".join(TRAIN)
    assert path.startswith(f"{venv_bin}:")
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in xla_flags
    assert "job 42: 2 nodes (gpu[1-2])" in out.stderr
