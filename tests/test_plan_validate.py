"""llm plan --validate: predicted step time within 25% and peak memory within 15% of short real
runs on this machine, for tiny and small, full and LoRA. Run as the CLI in a subprocess with one
CPU device (what `llm plan` plans for `cpu`), not the test session's 8 simulated ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow  # four short fine-tuning runs (small: ~4 s a step on 2 cores)
def test_predictions_match_short_real_runs(tmp_path):
    from llm.cpu.features import host_bf16_engine
    from llm.plan.mfu import for_cpu_engine, read_table

    # Validate under the conditions this CPU's rows were measured in: with llm's host-runtime
    # settings (kept_memory), or with glibc's defaults where the rows predate them.
    rows = [r for r in for_cpu_engine(read_table(), host_bf16_engine() or "none") if r.hardware == "cpu"]
    kept = all(r.kept_memory for r in rows)
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "LLM_CPU_KEEP_MEMORY": "1" if kept else "0"}
    out = tmp_path / "validate.json"
    proc = subprocess.run(
        [sys.executable, "-m", "llm.cli.main", "plan", "--validate", "--validate-configs", "tiny,small",
         "--validate-methods", "full,lora", "--steps", "3", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    print(proc.stdout)
    results = json.loads(out.read_text())
    assert [(r["config"], r["method"]) for r in results] == [("tiny", "full"), ("tiny", "lora"), ("small", "full"), ("small", "lora")]
    for r in results:
        assert abs(r["memory_error"]) <= 0.15, r
        assert abs(r["step_error"]) <= 0.25, r
