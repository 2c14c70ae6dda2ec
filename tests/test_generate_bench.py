"""llm.generate.bench on a tiny shape: the figures and JSON keys the `llm bench generate`
command promises, and greedy agreement with Hugging Face `generate` on the same exported
weights (Llama and GPT-2), which proves the comparison runs the same model."""

from __future__ import annotations

import json

import pytest

from llm.config.base import base_config
from llm.generate.bench import run_generate_bench, weight_bytes


def tiny_config(family: str):
    c = base_config()
    m = c.model
    m.family = family
    m.vocab_size, m.d_model, m.n_layers, m.n_heads, m.d_ff, m.max_seq_len = 300, 64, 2, 4, 128, 64
    m.n_kv_heads = 4 if family == "gpt2" else 2
    m.init_std = 0.1  # peaked logits: greedy ties between two f32 implementations are implausible
    c.data.seq_len = 64
    return c


@pytest.mark.slow
def test_bench_reports_speed_and_matches_hf_greedy(tmp_path):
    path = tmp_path / "bench.json"
    result = run_generate_bench(
        tiny_config("llama"), vs_hf=True, json_path=str(path), prompt_len=8, new_tokens=12, batches=(1, 4),
        repeats=1, bandwidth_mb=32,
    )
    assert json.loads(path.read_text()) == result
    for key in ("tokens_per_s", "hf_tokens_per_s", "speedup_vs_hf", "tokens_per_s_b1", "hf_tokens_per_s_b1",
                "speedup_vs_hf_b1", "roofline_fraction_b1"):
        assert result[key] > 0, key
    assert result["batch"] == 4 and result["tokens_per_s"] == result["tokens_per_s_b4"]
    assert result["speedup_vs_hf"] == pytest.approx(result["tokens_per_s"] / result["hf_tokens_per_s"])
    assert result["greedy_agreement_with_hf_b1"] == 1.0
    assert result["greedy_agreement_with_hf_b4"] == 1.0


@pytest.mark.slow
def test_gpt2_greedy_matches_hf_generate(tmp_path):
    result = run_generate_bench(
        tiny_config("gpt2"), vs_hf=True, json_path=None, prompt_len=8, new_tokens=12, batches=(3,), repeats=1
    )
    assert result["greedy_agreement_with_hf_b3"] == 1.0 and "roofline_fraction_b1" not in result


def test_weight_bytes_counts_each_matrix_once_and_skips_a_gather_only_embedding():
    import numpy as np

    params = {"embed": np.zeros((10, 4)), "head": np.zeros((4, 10)), "blocks": {"w": np.zeros((4, 4))}}
    assert weight_bytes(params, np.float32) == (40 + 16) * 4
    tied = {"embed": np.zeros((10, 4)), "blocks": {"w": np.zeros((4, 4))}}
    assert weight_bytes(tied, "bfloat16") == (40 + 16) * 2
