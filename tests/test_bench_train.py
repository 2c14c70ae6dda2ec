"""`llm bench` (train) produces the figures the issue names, with the HF peer on the same shape.
Only the keys and their sanity are checked: timings belong to benchmarks, not tests."""

import json

from helpers import tiny_config
from llm.bench.train_bench import run_train_bench


def test_train_bench_writes_ours_and_the_peer(tmp_path):
    out = tmp_path / "bench.json"
    config = tiny_config("data.seq_len=32", "mesh.data=8")
    result = run_train_bench(config, steps=1, vs_hf=True, json_path=str(out))
    saved = json.loads(out.read_text())
    assert {"tokens_per_s", "mfu", "hf_tokens_per_s", "speedup_vs_hf", "peak_memory_bytes"} <= set(saved)
    assert saved["tokens_per_s"] > 0 and saved["hf_tokens_per_s"] > 0
    assert abs(saved["speedup_vs_hf"] - saved["tokens_per_s"] / saved["hf_tokens_per_s"]) < 1e-9
    assert 0 < result["mfu"] and result["model_flops_per_token"] > 0
