"""llm.generate.generator: cached generation equals full recomputation, per-row limits and
stops, streaming, bucketing, sampling reproducibility and the one-line input errors."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from llm.config.base import base_config
from llm.errors import UserError
from llm.generate.generator import Generator, bucket_length
from llm.generate.panel_matmul import PanelKernel
from llm.generate import panel_matmul
from llm.generate.sampling import SamplingOptions
from llm.model.build import abstract_model, param_shardings
from llm.model.spec import model_spec
from llm.parallel.mesh import build_mesh
from llm.parallel.rules import AxisRules
from llm.peft import lora
from llm.peft.spec import peft_spec

CONTEXT = 96
PROMPT_LENS = (1, 5, 16, 23)  # mixed, across two prompt buckets (16 and 32)
MAX_NEW = (16, 7, 12, 9)  # one new-token bucket (16), so most tests share compiled programs


# Family variants: Gemma-3-like (local / global layers, every switch on), Mistral-like (every layer
# windowed). Windows shorter than the prompts, so the KV cache reads are window-limited.
VARIANTS = {
    "gemma": dict(n_layers=3, sliding_window=6, layer_types=("sliding", "full", "sliding"), rope_local_theta=100.0,
                  qk_norm=True, norm_plus_one=True, post_norms=True, mlp_activation="gelu_tanh", embed_scale=True,
                  query_pre_attn_scalar=20.0, attn_softcap=3.0, final_softcap=5.0, tie_embeddings=True),
    "windowed": dict(sliding_window=6),
}


def build(family: str = "llama", scan: bool = False):
    """A small random model; vocab 250 pads to 256 so the padded logit columns are exercised.
    family: llama | gpt2 | a VARIANTS key (llama family with those switches)."""
    return _build(family, scan)  # one cache key per model, however the defaults are spelled


@functools.lru_cache(maxsize=None)
def _build(family: str, scan: bool):
    c = base_config()
    m = c.model
    variant = VARIANTS.get(family, {})
    m.family, m.scan_layers = ("llama" if variant else family), scan
    m.vocab_size, m.d_model, m.n_layers, m.d_ff, m.max_seq_len = 250, 64, 2, 128, CONTEXT
    m.n_heads, m.n_kv_heads = 4, (4 if family == "gpt2" else 2)
    m.init_std = 0.1
    for key, value in variant.items():
        m[key] = value
    c.data.seq_len = 64
    mesh = build_mesh(c.mesh, jax.devices()[:1])
    rules = AxisRules.from_config(c.mesh.rules, mesh)
    graphdef, params = random_params(model_spec(c), rules, seed=1)
    forward = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))
    return Generator(graphdef, params), forward


def random_params(spec, rules, seed: int):
    """Random weights drawn with numpy and placed with the model's shardings (compiling the
    jitted initialiser costs more than these tests); norm scales stay near 1."""
    graphdef, abstract = abstract_model(spec, rules)
    shardings = param_shardings(abstract, spec, rules)
    rng = np.random.default_rng(seed)

    def draw(path, leaf, sharding):
        name = jax.tree_util.keystr(path)
        value = rng.normal(0.0, spec.init_std, leaf.shape)
        if "norm" in name and "scale" in name:
            value = value + 1.0
        return jax.device_put(value.astype(np.float32), sharding)

    params = jax.tree_util.tree_map_with_path(draw, abstract.to_pure_dict(), shardings)
    return graphdef, params


def prompts_for(lengths, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 250, size=n).tolist() for n in lengths]


def full_logits(forward, params, seq: list[int]) -> np.ndarray:
    """Logits of a full forward pass (right padding does not change earlier positions)."""
    arr = np.zeros((1, CONTEXT), np.int32)
    arr[0, : len(seq)] = seq
    return np.asarray(forward(params, arr))[0, : len(seq)]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def greedy_by_recompute(forward, params, prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(np.argmax(full_logits(forward, params, seq)[-1])))
    return seq[len(prompt) :]


@pytest.mark.parametrize("family,scan", [("llama", False), ("gpt2", False), ("llama", True), ("gemma", False), ("gemma", True)])
def test_greedy_cached_equals_full_recompute_and_logprobs(family, scan):
    gen, forward = build(family, scan)
    prompts = prompts_for(PROMPT_LENS)
    out = gen.generate(prompts, max_new_tokens=list(MAX_NEW), return_logprobs=True)
    for prompt, n, c in zip(prompts, MAX_NEW, out):
        assert c.finish_reason == "length" and len(c.tokens) == n
        assert c.tokens == greedy_by_recompute(forward, gen.params, prompt, n)
        seq = prompt + c.tokens
        logp = log_softmax(full_logits(forward, gen.params, seq))
        expected = [float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(c.tokens)]
        np.testing.assert_allclose(c.logprobs, expected, rtol=1e-5)
    assert len({t for c in out for t in c.tokens}) > 8  # not degenerate, so equality means something


@pytest.mark.parametrize("family,scan", [("llama", False), ("windowed", True)])
def test_decoding_across_kv_cache_blocks_equals_full_recompute(family, scan):
    """40 new tokens: a 64-slot new-token bucket, i.e. two decode blocks of the KV cache
    (llm.generate.kv_cache.block_sizes) that attention starts reading one after the other;
    streamed in chunks that straddle the block boundary. Windowed: the second block's steps
    skip the prompt block outright (it lies wholly behind the window)."""
    gen, forward = build(family, scan)
    prompts = prompts_for((5, 23), seed=7)
    out = gen.generate(prompts, max_new_tokens=40, return_logprobs=True)
    for prompt, c in zip(prompts, out):
        assert c.tokens == greedy_by_recompute(forward, gen.params, prompt, 40)
        logp = log_softmax(full_logits(forward, gen.params, prompt + c.tokens))
        expected = [float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(c.tokens)]
        np.testing.assert_allclose(c.logprobs, expected, rtol=1e-5)
    streamed = gen.generate(prompts, max_new_tokens=40, return_logprobs=True, on_chunk=lambda _: None, chunk_tokens=12)
    assert [c.tokens for c in streamed] == [c.tokens for c in out]


def unpacked(params):
    """The plain arrays behind a generator's packed kernels."""
    is_packed = lambda x: isinstance(x, PanelKernel)
    return jax.tree_util.tree_map(lambda x: x[...] if is_packed(x) else x, params, is_leaf=is_packed)


@pytest.mark.parametrize("rows", [4, 16])
def test_packed_kernels_decode_like_plain_weights(rows):
    """On CPU the generator holds every layer matrix and the untied LM head packed for the CPU
    decode kernel (llm.generate.layout); tokens and log-probs equal full recomputation with
    XLA's dots on the plain weights, for a small batch and one of 16 rows."""
    gen, forward = build()
    packed = gen.params
    assert isinstance(packed["head"], PanelKernel)
    for name in ("q", "k", "v", "o"):
        assert isinstance(packed["blocks"][1]["attn"][name]["kernel"], PanelKernel)
    for name in ("gate", "up", "down"):
        assert isinstance(packed["blocks"][0]["mlp"][name]["kernel"], PanelKernel)
    plain = unpacked(packed)
    assert not any(isinstance(x, PanelKernel) for x in jax.tree_util.tree_leaves(plain, is_leaf=lambda x: isinstance(x, PanelKernel)))
    prompts = prompts_for(PROMPT_LENS * (rows // 4), seed=11)
    out = gen.generate(prompts, max_new_tokens=12, return_logprobs=True)
    for prompt, c in zip(prompts[::3], out[::3]):
        assert c.tokens == greedy_by_recompute(forward, plain, prompt, 12)
        logp = log_softmax(full_logits(forward, plain, prompt + c.tokens))
        expected = [float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(c.tokens)]
        np.testing.assert_allclose(c.logprobs, expected, rtol=1e-5)


def test_lora_adapters_generate_like_the_adapted_full_forward():
    """A LoRA-adapted model (llm.peft.lora, trained-looking B) generates without merging: tokens
    and log-probs equal full recomputation with the adapted model, and tokens equal generation
    from the merged weights."""
    gen, _ = build()
    c = base_config()
    c.peft.lora_rank = 4
    graphdef, adapted, info = lora.add_lora(gen.graphdef, unpacked(gen.params), peft_spec(c), seed=3)
    rng = np.random.default_rng(4)
    adapted = jax.tree_util.tree_map_with_path(
        lambda path, x: jax.numpy.asarray(0.2 * rng.standard_normal(x.shape), x.dtype) if "lora_b" in jax.tree_util.keystr(path) else x,
        adapted,
    )
    adapted_gen = Generator(graphdef, adapted)
    forward = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))
    prompts = prompts_for(PROMPT_LENS, seed=8)
    out = adapted_gen.generate(prompts, max_new_tokens=10, return_logprobs=True)
    base_out = gen.generate(prompts, max_new_tokens=10)
    assert [c.tokens for c in out] != [c.tokens for c in base_out]  # the adapters matter
    for prompt, c in zip(prompts, out):
        assert c.tokens == greedy_by_recompute(forward, adapted, prompt, 10)
        logp = log_softmax(full_logits(forward, adapted, prompt + c.tokens))
        expected = [float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(c.tokens)]
        np.testing.assert_allclose(c.logprobs, expected, rtol=1e-5)
    merged = Generator(gen.graphdef, lora.merge(adapted, info)).generate(prompts, max_new_tokens=10)
    assert [c.tokens for c in merged] == [c.tokens for c in out]


def test_without_the_kernel_the_weights_stay_plain_and_decode_the_same(monkeypatch):
    """Where the CPU decode kernel cannot be built the generator keeps the weights as they are
    and XLA's dots decode the same tokens."""
    gen, _ = build()
    monkeypatch.setattr(panel_matmul, "available", lambda: False)
    plain_gen = Generator(gen.graphdef, unpacked(gen.params))
    assert not any(isinstance(x, PanelKernel) for x in jax.tree_util.tree_leaves(plain_gen.params, is_leaf=lambda x: isinstance(x, PanelKernel)))
    prompts = prompts_for(PROMPT_LENS, seed=5)
    plain = plain_gen.generate(prompts, max_new_tokens=list(MAX_NEW), return_logprobs=True)
    out = gen.generate(prompts, max_new_tokens=list(MAX_NEW), return_logprobs=True)
    for a, b in zip(plain, out):
        assert a.tokens == b.tokens
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=1e-5)


def test_per_row_stop_tokens_end_rows_early():
    gen, _ = build()
    prompts = prompts_for(PROMPT_LENS)
    free = gen.generate(prompts, max_new_tokens=12, return_logprobs=True)
    # Row 0 stops at its 4th token, row 2 at its 2nd (first occurrences); rows 1 and 3 get a
    # stop id they never produce.
    stop0, stop2 = free[0].tokens[3], free[2].tokens[1]
    never = next(t for t in range(250) if t not in free[1].tokens + free[3].tokens)
    stops = [[stop0], [never], [stop2], [never]]
    out = gen.generate(prompts, max_new_tokens=12, stop_tokens=stops, return_logprobs=True)
    for row, (f, c) in enumerate(zip(free, out)):
        stop = stops[row][0]
        if stop in f.tokens:
            cut = f.tokens.index(stop) + 1
            assert c.tokens == f.tokens[:cut] and c.finish_reason == "stop"
        else:
            assert c.tokens == f.tokens and c.finish_reason == "length"
    assert len(out[0].tokens) <= 4 and len(out[2].tokens) <= 2


def test_streaming_chunks_concatenate_to_the_one_shot_result():
    gen, _ = build()
    prompts = prompts_for(PROMPT_LENS, seed=3)
    one_shot = gen.generate(prompts, max_new_tokens=list(MAX_NEW), return_logprobs=True)
    chunks: list[list[list[int]]] = []
    streamed = gen.generate(
        prompts, max_new_tokens=list(MAX_NEW), return_logprobs=True, on_chunk=chunks.append, chunk_tokens=4
    )
    assert len(chunks) == 5  # the prefill's token, then ceil(15 / 4) chunks for the longest row
    for row in range(len(prompts)):
        joined = [t for chunk in chunks for t in chunk[row]]
        assert joined == one_shot[row].tokens == streamed[row].tokens
        assert streamed[row].logprobs == one_shot[row].logprobs


def test_prompt_lengths_in_one_bucket_share_compiled_programs():
    gen, _ = build()
    before_prefill = gen.engine.prefill._cache_size()
    before_decode = gen.engine.decode._cache_size()
    for lengths, new in [((3, 9), 5), ((14, 2), 11), ((16, 1), 16)]:
        gen.generate(prompts_for(lengths), max_new_tokens=new)
    # A short last batch padded to the batch size reuses the program too, with the same tokens.
    full = gen.generate(prompts_for((4, 7)), max_new_tokens=6)
    short = gen.generate(prompts_for((4,)), max_new_tokens=6, pad_batch_to=2)
    assert short[0].tokens == full[0].tokens
    assert gen.engine.prefill._cache_size() - before_prefill <= 1
    assert gen.engine.decode._cache_size() - before_decode <= 1
    assert [bucket_length(n) for n in (1, 16, 17, 33)] == [16, 16, 32, 64]


def test_sampling_is_reproducible_and_top_k_1_is_greedy():
    gen, _ = build()
    prompts = prompts_for(PROMPT_LENS)
    hot = SamplingOptions(temperature=1.5, top_p=0.95)
    a = gen.generate(prompts, max_new_tokens=10, options=hot, seed=7)
    b = gen.generate(prompts, max_new_tokens=10, options=hot, seed=7)
    c = gen.generate(prompts, max_new_tokens=10, options=hot, seed=8)
    assert [x.tokens for x in a] == [x.tokens for x in b]
    assert [x.tokens for x in a] != [x.tokens for x in c]
    compiled = gen.engine.decode._cache_size()
    gen.generate(prompts, max_new_tokens=10, options=SamplingOptions(temperature=0.7, top_p=0.5), seed=7)
    assert gen.engine.decode._cache_size() == compiled  # temperature and top-p values are traced
    greedy = gen.generate(prompts, max_new_tokens=10, return_logprobs=True)
    top1 = gen.generate(prompts, max_new_tokens=10, options=SamplingOptions(temperature=1.5, top_k=1), seed=3)
    assert [x.tokens for x in top1] == [x.tokens for x in greedy]


@pytest.mark.parametrize(
    "prompts,kwargs,message",
    [
        ([[1, 2], []], {}, "prompt 1 is empty"),
        ([[1] * CONTEXT], {}, f"context holds {CONTEXT}"),
        ([[1] * 90], {"max_new_tokens": 10}, "lower max_new_tokens to <= 6"),
        ([[1, 2]], {"stop_tokens": [300]}, "unknown stop token id 300"),
        ([[1, 2]], {"options": SamplingOptions(temperature=-0.5)}, "temperature=-0.5 must be >= 0"),
        ([[1, 2]], {"options": SamplingOptions(temperature=1.0, top_p=0.0)}, "top_p=0.0"),
        ([[1, 2]], {"max_new_tokens": 0}, "max_new_tokens=0"),
        ([[1, 999]], {}, "token id 999 outside the vocabulary"),
        ([], {}, "no prompts"),
    ],
)
def test_bad_input_is_a_one_line_user_error(prompts, kwargs, message):
    gen, _ = build()
    kwargs = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(UserError, match=message) as err:
        gen.generate(prompts, **kwargs)
    assert "\n" not in str(err.value)


def test_stop_sequences_end_a_row_after_their_last_token():
    """A multi-token stop sequence (a tokenized stop string) ends the row where the sequence
    completes; a sequence that never occurs changes nothing."""
    gen, _ = build()
    prompts = [[1, 2, 3], [4, 5]]
    free = gen.generate(prompts, max_new_tokens=12)
    seq = free[0].tokens[3:5]
    first = next(i for i in range(1, 12) if free[0].tokens[i - 1 : i + 1] == seq) + 1
    cut = gen.generate(prompts, max_new_tokens=12, stop_sequences=[seq])
    assert cut[0].tokens == free[0].tokens[:first] and cut[0].finish_reason == "stop"
    never = gen.generate(prompts, max_new_tokens=12, stop_sequences=[[249, 249, 249, 249]])
    assert [c.tokens for c in never] == [c.tokens for c in free] and never[0].finish_reason == "length"


def test_window_limited_cache_reads():
    """Which cache blocks a windowed layer reads: those not wholly behind its window."""
    import jax.numpy as jnp

    from llm.generate.kv_cache import first_visible_block

    blocks = [jnp.zeros((1, 1, n, 1)) for n in (32, 32, 32, 64)]  # slots 0-31, 32-63, 64-95, 96-159
    assert [first_visible_block(blocks, r, 0) for r in range(4)] == [0, 0, 0, 0]
    assert [first_visible_block(blocks, r, 6) for r in range(4)] == [0, 0, 1, 2]
    assert first_visible_block(blocks, 2, 34) == 0  # slot 31 is 33 slots before slot 64: inside a window of 34
    assert first_visible_block(blocks, 2, 33) == 1  # ... and outside one of 33 (distance < window is visible)
