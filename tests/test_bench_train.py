"""`llm bench [train]`: our train step and the HF peer measured on the same work. What is
checked is what each side ran (parameter count, batch shape, tokens) and that its timings are
plausible; speeds themselves belong to benchmarks, not tests."""

import math

import pytest

from helpers import tiny_config
from llm.bench.train import run_train_bench


@pytest.mark.slow  # a JAX compile and a PyTorch model at two thread counts
def test_train_bench_measures_ours_and_the_peer_on_the_same_work():
    config = tiny_config("data.seq_len=32", "mesh.data=8")
    steps = 1
    r = run_train_bench(config, steps=steps, vs_hf=True)
    batch, seq_len = config.data.batch_size, config.data.seq_len
    # Same model and the same work on both sides, as each side reports it.
    assert r["params"] == r["hf_params"] > 0
    assert r["batch_shape"] == r["hf_batch_shape"] == [batch, seq_len]
    assert r["tokens"] == r["hf_tokens"] == steps * batch * seq_len
    for key in ("step_time", "hf_step_time"):
        assert 0 < r[key] < 60 and math.isfinite(r[key]), (key, r[key])
    assert 0 < r["mfu"] < 1
    assert r["peak_memory_bytes"] > 4 * r["params"] and math.isfinite(r["loss"])
