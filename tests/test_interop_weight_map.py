"""The name/layout rules: each maps a Hugging Face tensor to our params and back exactly, covers
every param of the model once, and follows the documented layouts."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from llm.config.base import base_config
from llm.interop.weight_map import ignorable, pad_rows, weight_rules
from llm.model.build import abstract_model
from llm.model.spec import model_spec
from llm.parallel.rules import AxisRules


def _spec(family: str, **model):
    config = base_config()
    config.model.family = family
    config.model.vocab_size = 300
    config.model.d_model, config.model.n_heads, config.model.n_kv_heads, config.model.d_ff = 64, 4, 4 if family == "gpt2" else 2, 96
    for k, v in model.items():
        config.model[k] = v
    return model_spec(config)


VARIANTS = [("llama", {}), ("llama", {"tie_embeddings": True, "head_dim": 32}), ("llama", {"qkv_bias": True}),
            ("gpt2", {"tie_embeddings": True}), ("gpt2", {})]


@pytest.mark.parametrize("family,model", VARIANTS)
def test_rules_cover_every_param_exactly_once_with_its_shape(family, model):
    spec = _spec(family, **model)
    _, abstract = abstract_model(spec, AxisRules.from_config(base_config().mesh.rules))
    shapes = nnx.to_pure_dict(abstract)
    expected = {tuple(k.key for k in path): leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(shapes)}
    covered = [p for r in weight_rules(spec) for p in r.ours]
    assert sorted(map(str, covered)) == sorted(map(str, expected))
    names = [r.hf for r in weight_rules(spec)]
    assert len(set(names)) == len(names)
    rng = np.random.default_rng(0)
    for rule in weight_rules(spec):
        hf = rng.standard_normal(rule.hf_shape).astype(np.float32)
        ours = rule.to_ours(hf)
        assert [o.shape for o in ours] == [expected[p] for p in rule.ours], rule.hf
        np.testing.assert_array_equal(rule.to_hf(list(ours)), hf, err_msg=rule.hf)  # exact inverse


def test_llama_layouts():
    spec = _spec("llama", qkv_bias=True)
    rules = {r.hf: r for r in weight_rules(spec)}
    w = np.arange(32 * 64, dtype=np.float32).reshape(32, 64)  # k_proj: (kv*hd, d) = (2*16, 64)
    (k,) = rules["model.layers.0.self_attn.k_proj.weight"].to_ours(w)
    assert k.shape == (64, 2, 16) and k[5, 1, 3] == w[1 * 16 + 3, 5]  # kernel[in, head, dim] = W[head*hd+dim, in]
    o_w = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    (o,) = rules["model.layers.1.self_attn.o_proj.weight"].to_ours(o_w)
    assert o.shape == (4, 16, 64) and o[2, 5, 7] == o_w[7, 2 * 16 + 5]
    (b,) = rules["model.layers.0.self_attn.q_proj.bias"].to_ours(np.arange(64, dtype=np.float32))
    assert b.shape == (4, 16) and b[3, 2] == 50
    embed = rules["model.embed_tokens.weight"].to_ours(np.ones((300, 64), np.float32))[0]
    assert embed.shape == (384, 64) and embed[299].sum() == 64 and embed[300:].sum() == 0
    (head,) = rules["lm_head.weight"].to_ours(np.ones((300, 64), np.float32))
    assert head.shape == (64, 384) and head[:, 300:].sum() == 0


def test_gpt2_fused_qkv_split():
    spec = _spec("gpt2", tie_embeddings=True)
    rules = {r.hf: r for r in weight_rules(spec)}
    w = np.arange(64 * 192, dtype=np.float32).reshape(64, 192)
    q, k, v = rules["transformer.h.0.attn.c_attn.weight"].to_ours(w)
    assert q.shape == (64, 4, 16)
    assert q[3, 1, 2] == w[3, 16 + 2] and k[3, 1, 2] == w[3, 64 + 16 + 2] and v[3, 1, 2] == w[3, 128 + 16 + 2]
    assert "transformer.wpe.weight" in rules and "lm_head.weight" not in rules
    assert "lm_head.weight" in {r.hf for r in weight_rules(_spec("gpt2"))}  # untied GPT-2 has its own head
    bare = weight_rules(spec, hf_names=["wte.weight", "h.0.ln_1.weight"])
    assert bare[0].hf == "wte.weight" and all(not r.hf.startswith("transformer.") for r in bare)


def test_ignorable_tensors():
    tied, untied = _spec("llama", tie_embeddings=True), _spec("llama")
    assert ignorable("lm_head.weight", tied) and not ignorable("lm_head.weight", untied)
    assert ignorable("model.layers.0.self_attn.rotary_emb.inv_freq", untied)
    gpt2 = _spec("gpt2")
    assert ignorable("h.3.attn.bias", gpt2) and ignorable("transformer.h.0.attn.masked_bias", gpt2)
    assert not ignorable("transformer.h.0.attn.c_attn.bias", gpt2)


def test_pad_rows():
    a = np.ones((3, 2), np.float32)
    assert pad_rows(a, 3) is a
    np.testing.assert_array_equal(pad_rows(a, 5), np.vstack([a, np.zeros((2, 2))]))
