"""The decoder: layer layouts, remat, packing, RoPE scaling and vocab padding."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import assert_trees_close_at_scale, random_batch, tiny_config
from llm.model.build import init_params
from llm.model.rope import inverse_frequencies
from llm.model.spec import model_spec
from llm.parallel.mesh import build_mesh
from llm.parallel.rules import AxisRules
from llm.train.loss import lm_loss_fn


def build(*overrides, seed=0):
    config = tiny_config(*overrides)
    spec = model_spec(config, platform="cpu")
    rules = AxisRules.from_config(config.mesh.rules, build_mesh(config.mesh, jax.devices()[:1]))
    graphdef, params, _ = init_params(spec, rules, seed)
    return graphdef, params, spec


def forward(graphdef, params, batch):
    return nnx.merge(graphdef, params)(batch["inputs"], batch["positions"], batch["segment_ids"])


def loss_and_grads(batch, *overrides):
    """(loss, grads) of the LM loss for a model built with the overrides (same init seed)."""
    graphdef, params, _ = build(*overrides)
    (loss, _), grads = jax.value_and_grad(lm_loss_fn(graphdef), has_aux=True)(params, {}, batch, None)
    return loss, grads


def stack_blocks(params):
    blocks = [params["blocks"][i] for i in sorted(params["blocks"])]
    return {**params, "blocks": jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *blocks)}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_scanned_layers_equal_the_python_loop(family):
    kv = "model.n_kv_heads=4" if family == "gpt2" else "model.n_kv_heads=2"
    graphdef, params, _ = build(f"model.family={family}", kv)
    scan_graphdef, _, _ = build(f"model.family={family}", kv, "model.scan_layers=true")
    batch = random_batch(256, 2, 32, packed=True)
    a = forward(graphdef, params, batch)
    b = forward(scan_graphdef, stack_blocks(params), batch)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy", ["full", "save_matmul"])
def test_remat_keeps_loss_and_gradients(policy):
    batch = random_batch(256, 2, 32)
    results = [loss_and_grads(batch, f"model.remat={remat}", "model.scan_layers=true") for remat in ("none", policy)]
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
    assert_trees_close_at_scale(results[1][1], results[0][1])


def assert_rows_equal_their_documents_alone(graphdef, params, packed: dict) -> None:
    """Each packed row's logits (two documents, split at a third: random_batch) equal each
    document's run on its own."""
    logits = np.asarray(forward(graphdef, params, packed))
    length = packed["inputs"].shape[1]
    cut = length // 3
    for lo, hi in ((0, cut), (cut, length)):
        alone = {k: v[:, lo:hi] for k, v in packed.items()}
        alone["segment_ids"] = np.ones_like(alone["segment_ids"])
        np.testing.assert_allclose(logits[:, lo:hi], np.asarray(forward(graphdef, params, alone)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_packed_rows_do_not_attend_across_documents(family):
    kv = "model.n_kv_heads=4" if family == "gpt2" else "model.n_kv_heads=2"
    graphdef, params, _ = build(f"model.family={family}", kv)
    packed = random_batch(256, 2, 48, packed=True)
    assert_rows_equal_their_documents_alone(graphdef, params, packed)


def test_llama3_rope_scaling_matches_transformers():
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = transformers.LlamaConfig(
        hidden_size=256, num_attention_heads=4, rope_theta=500000.0, max_position_embeddings=131072,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
    )
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    ours = inverse_frequencies(64, 500000.0, ("llama3", 8.0, 1.0, 4.0, 8192))
    np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-6)


def test_padded_vocab_is_never_predicted():
    graphdef, params, spec = build("model.vocab_size=200")
    assert spec.padded_vocab == 256 and params["embed"].shape[0] == 256
    logits = np.asarray(forward(graphdef, params, random_batch(200, 2, 16)))
    assert (logits[..., 200:] <= -1e29).all()
    assert np.isfinite(logits[..., :200]).all()


def test_grouped_and_multi_query_attention_shapes():
    for kv in (1, 2, 4):
        graphdef, params, _ = build(f"model.n_kv_heads={kv}", "model.qkv_bias=true")
        assert params["blocks"][0]["attn"]["k"]["kernel"].shape == (128, kv, 32)
        assert params["blocks"][0]["attn"]["q"]["bias"].shape == (4, 32)
        out = forward(graphdef, params, random_batch(256, 1, 8))
        assert out.shape == (1, 8, 256)


@pytest.mark.parametrize("block", [5, 16, 48, 64])
@pytest.mark.parametrize("kv_heads", [1, 2])
def test_blocked_attention_equals_xla_with_packing(block, kv_heads):
    """Values and gradients of the causal query-block attention match XLA's full-square one,
    for blocks that do and do not divide the length, under GQA/MQA and packed segments."""
    from llm.model.attention import attend, attention_mask

    keys = jax.random.split(jax.random.key(block * 10 + kv_heads), 4)
    q = jax.random.normal(keys[0], (2, 48, 4, 16))
    k, v = (jax.random.normal(key, (2, 48, kv_heads, 16)) for key in keys[1:3])
    cotangent = jax.random.normal(keys[3], q.shape)
    segments = np.ones((2, 48), np.int32)
    segments[0, 20:] = 2
    segments[1, 7:30] = 3
    mask = attention_mask(jnp.asarray(segments), 48)

    def loss(impl, q, k, v, mask):
        return jnp.sum(attend(q, k, v, mask, impl, block) * cotangent)

    grads = jax.jit(jax.grad(loss, argnums=(1, 2, 3)), static_argnums=0)
    outputs = jax.jit(lambda impl, *a: attend(*a, impl, block), static_argnums=0)
    for m in (mask, None):
        np.testing.assert_allclose(outputs("blocked", q, k, v, m), outputs("xla", q, k, v, m), rtol=1e-5, atol=1e-5)
        for g, w in zip(grads("blocked", q, k, v, m), grads("xla", q, k, v, m)):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_blocked_attention_model_matches_xla(family):
    kv = "model.n_kv_heads=4" if family == "gpt2" else "model.n_kv_heads=2"
    batch = random_batch(256, 2, 48, packed=True)
    results = [
        loss_and_grads(batch, f"model.family={family}", kv, f"model.attention_impl={impl}", "model.attention_block=16")
        for impl in ("xla", "blocked")
    ]
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    assert_trees_close_at_scale(results[1][1], results[0][1])  # summation order differs by CPU (AVX2 / AVX-512)



# Family features: a Gemma-3-like tiny model (mixed local / global layers, every switch on) and a
# Mistral-like one (every layer windowed).
GEMMA = ("model.n_layers=3", "model.n_kv_heads=2", "model.head_dim=24", "model.sliding_window=5",
         "model.layer_types=('sliding','full','sliding')", "model.rope_local_theta=100.0", "model.qk_norm=true",
         "model.norm_plus_one=true", "model.post_norms=true", "model.mlp_activation=gelu_tanh", "model.embed_scale=true",
         "model.query_pre_attn_scalar=20.0", "model.attn_softcap=3.0", "model.final_softcap=4.0", "model.tie_embeddings=true")
WINDOWED = ("model.n_kv_heads=2", "model.sliding_window=4")


def _perturbed(batch: dict, column: int) -> dict:
    out = {k: np.array(v) for k, v in batch.items()}
    out["inputs"][:, column] = (out["inputs"][:, column] + 1) % 256
    return out


@pytest.mark.parametrize("variant", ["gemma", "windowed"])
def test_windowed_packed_rows_see_neither_other_documents_nor_beyond_the_window(variant):
    """Training path: a packed row equals its documents run alone (windows count positions
    within a document); in an all-windowed model a token more than n_layers * (window - 1)
    positions back cannot reach a query, and one inside the window does."""
    overrides = GEMMA if variant == "gemma" else WINDOWED
    graphdef, params, spec = build(*overrides)
    assert any(spec.windows)
    packed = random_batch(256, 2, 48, packed=True)
    assert_rows_equal_their_documents_alone(graphdef, params, packed)
    cut = 48 // 3
    if variant == "windowed":
        reach = spec.n_layers * (4 - 1)  # how far back information can travel through the layers
        base = np.asarray(forward(graphdef, params, packed))
        far = np.asarray(forward(graphdef, params, _perturbed(packed, cut + 2)))
        query = cut + 2 + reach + 1
        np.testing.assert_array_equal(far[:, query:], base[:, query:])  # beyond every window
        assert np.abs(far[:, cut + 2 : query] - base[:, cut + 2 : query]).max() > 1e-3  # within reach: it matters
        np.testing.assert_array_equal(far[:, :cut], base[:, :cut])  # the other document


@pytest.mark.parametrize("block", [8])
def test_blocked_attention_with_a_window_equals_xla(block):
    """The blocked path's key skipping (window static) equals XLA's attention under the same
    position-based window mask, values and gradients, with packing, soft-capping and a query
    scale."""
    from llm.model.attention import attend, attention_mask, window_mask

    keys = jax.random.split(jax.random.key(block), 4)
    q = jax.random.normal(keys[0], (2, 32, 4, 8))
    k, v = (jax.random.normal(key, (2, 32, 2, 8)) for key in keys[1:3])
    cotangent = jax.random.normal(keys[3], q.shape)
    segments = np.ones((2, 32), np.int32)
    segments[0, 17:] = 2
    positions = np.tile(np.arange(32), (2, 1))
    positions[0, 17:] = np.arange(15)
    mask = window_mask(attention_mask(jnp.asarray(segments), 32), jnp.asarray(positions), 6)

    def run(impl, q, k, v, window):
        return attend(q, k, v, mask, impl, block, scale=0.3, softcap_at=2.0, window=window)

    for window in (0, 6):  # without and with the blocked path skipping keys
        out = jax.jit(lambda *a: run("blocked", *a, window))(q, k, v)
        ref = jax.jit(lambda *a: run("xla", *a, 0))(q, k, v)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
        grads = jax.grad(lambda *a: jnp.sum(run("blocked", *a, window) * cotangent), argnums=(0, 1, 2))(q, k, v)
        want = jax.grad(lambda *a: jnp.sum(run("xla", *a, 0) * cotangent), argnums=(0, 1, 2))(q, k, v)
        for g, w in zip(grads, want):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_gemma_features_scan_equals_loop_on_the_blocked_path():
    """Mixed layer types under scan_layers (each layer picks its mask and RoPE tables inside
    the scan) equal the Python loop, on the blocked attention path; the final soft-cap bounds
    the logits."""
    batch = random_batch(256, 2, 48, packed=True)
    blocked = ("model.attention_impl=blocked", "model.attention_block=8")
    graphdef, params, _ = build(*GEMMA, *blocked)
    scan_graphdef, _, _ = build(*GEMMA, *blocked, "model.scan_layers=true")
    logits = np.asarray(forward(graphdef, params, batch))
    np.testing.assert_allclose(logits, np.asarray(forward(scan_graphdef, stack_blocks(params), batch)), rtol=1e-5, atol=1e-5)
    assert np.abs(logits[..., :256]).max() <= 4.0


def test_chunked_loss_with_final_softcap_equals_the_full_logits():
    """The fused chunked LM head applies the final soft-cap and its derivative."""
    batch = random_batch(256, 2, 32)
    full = loss_and_grads(batch, *GEMMA)
    chunked = loss_and_grads(batch, *GEMMA, "model.loss_chunk=8")
    np.testing.assert_allclose(full[0], chunked[0], rtol=1e-5)
    assert_trees_close_at_scale(chunked[1], full[1])


NAMED_REMAT = ["save_out_proj", "save_qkv_proj", "save_dot_except_mlp", "save_dot_except_mlpwi", "save_dot_with_context_except_mlp"]


@pytest.mark.parametrize("policy", NAMED_REMAT)
def test_named_remat_policies_keep_loss_and_gradients(policy):
    test_remat_keeps_loss_and_gradients(policy)


def saved_elements(remat: str, capsys) -> int:
    """Elements the backward pass keeps from the forward under `remat` (jax's own listing)."""
    graphdef, params, _ = build(f"model.remat={remat}", "model.scan_layers=true")
    batch = random_batch(256, 2, 32)
    jax.ad_checkpoint.print_saved_residuals(lambda p: lm_loss_fn(graphdef)(p, {}, batch, None)[0], params)
    shapes = re.findall(r"^\w+\[([\d,]*)\]", capsys.readouterr().out, flags=re.M)
    return sum(int(np.prod([int(d) for d in s.split(",") if d])) for s in shapes)


def test_named_remat_policies_keep_what_they_name(capsys):
    saved = {p: saved_elements(p, capsys) for p in ["full", *NAMED_REMAT, "save_matmul", "none"]}
    # out_proj is one (B, T, d) activation per layer; q, k, v three; their union four; + context five.
    assert saved["full"] < saved["save_out_proj"] < saved["save_qkv_proj"] < saved["save_dot_except_mlp"]
    assert saved["save_dot_except_mlp"] < saved["save_dot_with_context_except_mlp"] < saved["save_matmul"] < saved["none"]
    # mlpwo feeds only the residual add, whose gradient needs no operand: nothing more to keep.
    assert saved["save_dot_except_mlpwi"] == saved["save_dot_except_mlp"]


def test_an_unknown_remat_policy_lists_the_valid_ones():
    from llm.config.validate import validate_config
    from llm.errors import ConfigError
    from llm.model.decoder import REMAT_POLICIES

    with pytest.raises(ConfigError) as err:
        validate_config(tiny_config("model.remat=save_everything"))
    assert "save_everything" in str(err.value) and all(name in str(err.value) for name in REMAT_POLICIES)
