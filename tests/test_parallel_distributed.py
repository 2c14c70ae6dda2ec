"""The job's mesh on the real `llm train` path: a mesh that does not fit the job's devices, or
that would give a process rows it does not read, is a one-line error saying how the job is
spread over processes; once with one process, once as a real 2-process CPU job (loopback, gloo,
4 simulated devices each)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from llm.cli.main import main
from llm.parallel.multihost import allgather_json

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--config", "configs/tiny.py", "--config.data.source=synthetic", "--config.train.steps=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_allgather_json_in_one_process_is_the_value():
    assert allgather_json({"a": [1, 2]}) == [{"a": [1, 2]}]


def test_llm_train_mesh_error_says_the_job_shape(tmp_path, capsys):
    assert main([*TRAIN, "--workdir", str(tmp_path / "w"), "--config.mesh.data=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "= 3 devices, but 8 are available (the job has 1 process x 8 devices per process)" in err


def launch_train(tmp_path: Path, name: str, local_devices: int, *overrides: str) -> list[subprocess.CompletedProcess]:
    """`llm train` as a 2-process job with `local_devices` simulated CPU devices per process."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "TPU_", "JAX_COORD"))}
    env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={local_devices}")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "llm.cli.main", *TRAIN, "--workdir", str(tmp_path / name), *overrides,
             f"--config.distributed.coordinator_address=127.0.0.1:{port}", "--config.distributed.num_processes=2",
             f"--config.distributed.process_id={pid}", "--config.distributed.initialization_timeout=120"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for pid in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(procs, outputs)]


@pytest.mark.slow
def test_two_process_llm_train_mesh_errors_say_the_job_shape(tmp_path):
    for out in launch_train(tmp_path, "bad-size", 4, "--config.mesh.data=3"):
        assert out.returncode == 2, out.stderr[-3000:]
        errors = [line for line in out.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
        assert "= 3 devices, but 8 are available (the job has 2 processes x 4 devices per process)" in errors[0]
    # tensor=2 spans the two 1-device processes: each holds all 8 rows of a batch but reads only 4
    # (JAX would take the two different halves as copies of one batch and train on nonsense).
    for out in launch_train(tmp_path, "rows", 1, "--config.mesh.data=1", "--config.mesh.tensor=2"):
        assert out.returncode == 2, out.stderr[-3000:]
        assert "each process's devices hold 8 of the 8 batch rows, but each of the 2 processes reads 4" in out.stderr
        assert "make mesh.data x mesh.fsdp a multiple of 2" in out.stderr
