"""Multi-process training on CPU: 2 processes x 4 simulated devices (loopback, gloo) train
`tiny` on one 8-device mesh, checkpoint, are restarted and resume; every step's loss equals
a single process with 8 simulated devices (rtol 1e-5).

The data is the synthetic source, whose global batch k holds the same rows whatever the
process count (each process reads every P-th row); the text pipeline packs documents per
process, so its batches depend on the process count by design.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent(
    """
    import json, os, sys
    port, pid, nproc, steps, workdir = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // nproc}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    from llm.config.loading import load_config
    from llm.parallel.distributed import initialize
    from llm.train.loop import run_training

    overrides = [
        "data.source=synthetic", f"train.steps={steps}", "train.log_every=1", "train.eval_every=0",
        "train.measure_peak=false", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2",
    ]
    if nproc > 1:
        overrides += [f"distributed.coordinator_address=127.0.0.1:{port}", f"distributed.num_processes={nproc}",
                      f"distributed.process_id={pid}", "distributed.initialization_timeout=120"]
    config = load_config("configs/tiny.py", overrides)
    plan = initialize(config)
    assert jax.device_count() == 8 and jax.process_count() == nproc, (jax.device_count(), jax.process_count())
    summary = run_training(config, workdir)
    print("SUMMARY " + json.dumps({"kind": plan.kind, **summary}), flush=True)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script: Path, nproc: int, steps: int, workdir: Path) -> list[dict]:
    """Start `nproc` processes of one job and return each one's summary."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "TPU_", "JAX_COORD"))}
    env["PYTHONPATH"] = str(REPO)
    procs = [
        subprocess.Popen([sys.executable, str(script), str(port), str(i), str(nproc), str(steps), str(workdir)],
                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(nproc)
    ]
    summaries = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-4000:]
        line = next(l for l in stdout.splitlines() if l.startswith("SUMMARY "))
        summaries.append(json.loads(line[len("SUMMARY "):]))
    return summaries


def losses(workdir: Path) -> dict[int, float]:
    records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.mark.slow
def test_two_processes_train_checkpoint_resume_and_match_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)

    single = launch(script, 1, 6, tmp_path / "single")
    assert single[0]["kind"] == "single" and single[0]["step"] == 6

    first = launch(script, 2, 3, tmp_path / "multi")
    assert [s["kind"] for s in first] == ["explicit", "explicit"]
    assert [s["step"] for s in first] == [3, 3]
    # Both processes wrote their shards of one checkpoint; only process 0 wrote metrics.
    assert (tmp_path / "multi" / "checkpoints" / "3").is_dir()

    second = launch(script, 2, 6, tmp_path / "multi")  # a restart of the same job: it resumes
    assert [s["start_step"] for s in second] == [3, 3] and [s["step"] for s in second] == [6, 6]
    assert all(s["start"].startswith("resumed from") for s in second)

    expected, got = losses(tmp_path / "single"), losses(tmp_path / "multi")
    assert sorted(expected) == sorted(got) == [1, 2, 3, 4, 5, 6]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5), (step, got[step], expected[step])
    assert expected[6] < expected[1]  # it trained
