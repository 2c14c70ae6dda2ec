"""`llm bench generate` on a tiny shape: what each side ran (parameters, new tokens), plausible
decode times, and greedy agreement with Hugging Face `generate` on the same exported weights
(Llama and GPT-2), which proves the comparison runs the same model."""

from __future__ import annotations

import math

import pytest

from llm.bench.generate import run_generate_bench, weight_bytes
from llm.config.base import base_config


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
def test_bench_measures_both_sides_on_the_same_work():
    new_tokens = 12
    r = run_generate_bench(
        tiny_config("llama"), vs_hf=True, prompt_len=8, new_tokens=new_tokens, batches=(1, 4), repeats=1, bandwidth_mb=32,
    )
    assert r["params"] == r["hf_params"] > 0  # the same model on both sides
    for batch in (1, 4):
        assert r[f"tokens_b{batch}"] == r[f"hf_tokens_b{batch}"] == batch * new_tokens
        for key in (f"decode_s_b{batch}", f"hf_decode_s_b{batch}"):
            assert 0 < r[key] < 60 and math.isfinite(r[key]), (key, r[key])
        assert r[f"greedy_agreement_with_hf_b{batch}"] == 1.0
    assert r["batch"] == 4 and r["tokens_per_s"] == r["tokens_per_s_b4"]
    assert r["roofline_fraction_b1"] > 0
    # HF in both modes (bf16 left out only where torch's bf16 matmul is hopeless), the faster one
    # compared against; ours (auto, f32 in the suite) in both precisions.
    modes = r["hf_by_mode_b4"]
    assert "float32" in modes and set(modes) | set(r["hf_skipped_modes"]) == {"float32", "bfloat16"}
    assert r["hf_tokens_per_s_b4"] == max(m["tokens_per_s"] for m in modes.values()) == modes[r["hf_mode_b4"]]["tokens_per_s"]
    assert r["compute_dtype"] == "float32" and set(r["ours_by_precision_b4"]) == {"float32", "bfloat16"}


def family_config(family: str):
    """tiny_config("llama") built like Qwen3 or Gemma 3 (a window of 4 on the first of two
    layers, shorter than prompt + new tokens) or Gemma 2 (soft-capped, windowed likewise)."""
    c = tiny_config("llama")
    m = c.model
    m.qk_norm = family in ("qwen3", "gemma3")
    if family.startswith("gemma"):
        m.norm_plus_one = m.post_norms = m.embed_scale = m.tie_embeddings = True
        m.mlp_activation = "gelu_tanh"
        m.sliding_window, m.layer_types = 4, ("sliding", "full")
    if family == "gemma3":
        m.rope_theta, m.rope_local_theta = 1e6, 1e4
    if family == "gemma2":
        m.attn_softcap, m.final_softcap = 5.0, 3.0
    return c


@pytest.mark.slow
@pytest.mark.parametrize("family", ("qwen3", "gemma3", "gemma2"))
def test_family_peer_is_the_same_model_with_transformers_default_cache(family):
    """The HF peer of a Qwen3 / Gemma model is its own family's class, with the KV cache
    `generate` builds by default (sliding-window layers for Gemma's windowed layers), and decodes
    our weights greedily to the same tokens past the window."""
    r = run_generate_bench(family_config(family), vs_hf=True, prompt_len=8, new_tokens=12, batches=(2,), repeats=1)
    assert r["params"] == r["hf_params"] > 0
    assert r["hf_model"] == {"qwen3": "Qwen3ForCausalLM", "gemma3": "Gemma3ForCausalLM", "gemma2": "Gemma2ForCausalLM"}[family]
    expected_cache = {"DynamicLayer": 2} if family == "qwen3" else {"DynamicSlidingWindowLayer": 1, "DynamicLayer": 1}
    assert r["hf_cache"] == expected_cache
    assert r["greedy_agreement_with_hf_b2"] == 1.0


@pytest.mark.slow
def test_gpt2_greedy_matches_hf_generate():
    result = run_generate_bench(
        tiny_config("gpt2"), vs_hf=True, prompt_len=8, new_tokens=12, batches=(3,), repeats=1
    )
    assert result["params"] == result["hf_params"] and result["tokens_b3"] == result["hf_tokens_b3"] == 3 * 12
    assert result["greedy_agreement_with_hf_b3"] == 1.0 and "roofline_fraction_b1" not in result


def test_weight_bytes_counts_each_matrix_once_and_skips_a_gather_only_embedding():
    import numpy as np

    params = {"embed": np.zeros((10, 4)), "head": np.zeros((4, 10)), "blocks": {"w": np.zeros((4, 4))}}
    assert weight_bytes(params, np.float32) == (40 + 16) * 4
    tied = {"embed": np.zeros((10, 4)), "blocks": {"w": np.zeros((4, 4))}}
    assert weight_bytes(tied, "bfloat16") == (40 + 16) * 2


def test_peer_figures_per_mode_and_the_fastest_mode():
    """hf_figures on made-up bests: each mode's fastest thread count, and the faster mode."""
    from llm.bench.generate import hf_figures

    rows = [[1, 2, 3]]
    best = {("hf", "float32", 2): (1.0, 1.5, rows), ("hf", "float32", 1): (0.5, 0.7, rows),
            ("hf", "bfloat16", 2): (0.25, 0.4, rows), ("hf", "bfloat16", 1): (0.4, 0.6, rows)}
    figures = hf_figures(best, batch=2, new_tokens=3)  # 2 rows x 2 decoded tokens per second of decode
    assert figures["mode"] == "bfloat16"
    assert figures["by_mode"]["float32"]["threads"] == 1 and figures["by_mode"]["float32"]["tokens_per_s"] == 8.0
    assert figures["by_mode"]["bfloat16"]["threads"] == 2 and figures["by_mode"]["bfloat16"]["tokens_per_s"] == 16.0
    assert figures["by_mode"]["bfloat16"]["tokens_per_s_by_threads"] == {"2": 16.0, "1": 10.0}


def test_ours_runs_the_other_precision_only_under_auto_with_the_peer():
    from llm.bench.generate import other_precision

    config = tiny_config("llama")
    assert other_precision(config, True, "float32") == "bfloat16"
    assert other_precision(config, True, "bfloat16") == "float32"
    assert other_precision(config, False, "float32") is None
    config.precision.compute = "float32"
    assert other_precision(config, True, "float32") is None


def test_thread_counts_far_behind_at_warmup_are_not_timed_but_each_modes_best_is():
    from llm.bench.generate import behind_at_warmup

    warm = {("float32", 2): 7.0, ("float32", 1): 47.0, ("bfloat16", 2): 1.5, ("bfloat16", 1): 4.0}
    # bf16 is 12x slower than f32 here, but its best count stays: both modes are reported.
    assert behind_at_warmup(warm) == {("float32", 2)}


def test_an_hf_run_past_its_budget_is_stopped_and_not_run_again():
    """interleaved with _hf_budget: the first HF run of a mode has no limit, a later one of the
    same mode may take HOPELESS x its total; a run that passes it raises TooSlow in its streamer."""
    import time

    from llm.bench.generate import TooSlow, _hf_budget, interleaved

    calls = []

    def runner(name, stuck=False):
        def run(stamps):
            calls.append((name, stamps.deadline is not None))
            if stuck and stamps.deadline is not None:
                raise TooSlow  # what the streamer does once past the deadline
            stamps.extend([time.perf_counter(), time.perf_counter()])
            return [[1]]
        return run

    runs = {"ours": runner("ours"), ("hf", "float32", 1): runner("f32/1"), ("hf", "float32", 2): runner("f32/2", stuck=True)}
    stopped: set = set()
    best = interleaved(runs, repeats=2, budget=_hf_budget, stopped=stopped)
    assert stopped == {("hf", "float32", 2)} and set(best) == {"ours", ("hf", "float32", 1)}
    assert calls == [("ours", False), ("f32/1", False), ("f32/2", True), ("ours", False), ("f32/1", True)]
