"""`llm bench checkpoint` on the tiny preset: it really saves the whole train state (parameters
and Adam moments: the checkpoint is about the state's size) and reports plausible times."""

from __future__ import annotations

import math

import pytest

from helpers import tiny_config
from llm.bench.checkpoint import run_checkpoint_bench


@pytest.mark.slow  # a JAX compile, two Orbax saves and a restore
def test_checkpoint_bench_saves_the_state_and_times_it(capsys):
    config = tiny_config("data.seq_len=32", "mesh.data=8")
    r = run_checkpoint_bench(config, steps=1)
    assert r["state_bytes"] > 0 and r["checkpoint_bytes"] > 0.8 * r["state_bytes"], r  # ~0.93: light compression
    for key in ("step_time", "save_blocked_s", "save_wait_after_one_step_s", "restore_s"):
        assert 0 <= r[key] < 120 and math.isfinite(r[key]), (key, r[key])
    assert r["step_time"] > 0 and r["restore_s"] > 0
    assert "async save blocked the loop" in capsys.readouterr().out
