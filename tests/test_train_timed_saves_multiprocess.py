"""Two processes x 4 simulated CPU devices (gloo) with clocks that disagree: the time-based
checkpoints (`checkpoint.every_minutes`) still land on the same steps in both, because only
process 0's clock decides."""

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

# Process 0's clock advances 25 s per reading, so with every_minutes=1 its decisions are
# deterministic (saves at steps 3 and 4, the last being the final save); process 1's clock is
# far ahead and runs fast: on its own it would call every step due.
WORKER = textwrap.dedent(
    """
    import itertools, json, os, sys
    port, pid, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    from llm.config.loading import load_config
    from llm.train.loop import run_training

    config = load_config("configs/tiny.py", [
        "data.source=synthetic", "data.seq_len=16", "train.steps=4", "train.log_every=1", "train.eval_every=0",
        "train.measure_peak=false", "mesh.data=8", "checkpoint.every_minutes=1", "checkpoint.keep=10",
        f"distributed.coordinator_address=127.0.0.1:{port}", "distributed.num_processes=2",
        f"distributed.process_id={pid}", "distributed.initialization_timeout=120",
    ])
    ticks = itertools.count(1)
    clock = (lambda: 25.0 * next(ticks)) if pid == 0 else (lambda: 1e6 + 1000.0 * next(ticks))
    summary = run_training(config, workdir, clock=clock)
    print("SUMMARY " + json.dumps(summary), flush=True)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_skewed_clocks_save_on_the_same_steps(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "TPU_", "JAX_COORD"))}
    env["PYTHONPATH"] = str(REPO)
    procs = [subprocess.Popen([sys.executable, str(script), str(port), str(i), str(tmp_path / "w")], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    summaries = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-4000:]
        summaries.append(json.loads(next(l for l in stdout.splitlines() if l.startswith("SUMMARY "))[len("SUMMARY "):]))
    assert [s["saved_steps"] for s in summaries] == [[3, 4], [3, 4]]
    assert sorted(int(p.name) for p in (tmp_path / "w" / "checkpoints").iterdir() if p.name.isdigit()) == [3, 4]
