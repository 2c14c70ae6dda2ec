"""LoRA as a parameter-tree transform: exact start, merge / unmerge, target selection, dropout."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import random_batch, tiny_config
from llm.errors import UserError
from llm.model.build import init_params
from llm.model.spec import model_spec
from llm.parallel.mesh import build_mesh
from llm.parallel.rules import AxisRules
from llm.peft import lora
from llm.peft.spec import peft_spec


@functools.lru_cache(maxsize=None)
def _model(scan: bool):
    config = tiny_config(f"model.scan_layers={str(scan).lower()}")
    rules = AxisRules.from_config(config.mesh.rules, build_mesh(config.mesh, jax.devices()[:1]))
    graphdef, params, _ = init_params(model_spec(config, platform="cpu"), rules, 0)
    return graphdef, params


def base(*overrides):
    """(config with LoRA rank 4, graphdef, params); the model is built once per layout."""
    config = tiny_config("peft.lora_rank=4", *overrides)
    return (config, *_model(config.model.scan_layers))


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, params, batch):
    return nnx.merge(graphdef, params)(batch["inputs"], batch["positions"], batch["segment_ids"])


def logits(graphdef, params, batch):
    return np.asarray(_forward(graphdef, params, batch))


def perturb_adapters(params):
    """Stand-in for training: every B gets random values (A already is random)."""
    rng = np.random.default_rng(1)
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.asarray(0.05 * rng.standard_normal(leaf.shape), leaf.dtype) if "lora_b" in jax.tree_util.keystr(path) else leaf,
        params,
    )


@pytest.mark.parametrize("scan", [False, True])
def test_adapted_model_starts_exactly_at_the_base_and_merge_matches(scan):
    config, graphdef, params = base(f"model.scan_layers={str(scan).lower()}")
    batch = random_batch(256, 2, 32, packed=True)
    reference = logits(graphdef, params, batch)
    adapted_graphdef, adapted, info = lora.add_lora(graphdef, params, peft_spec(config), seed=0)
    np.testing.assert_array_equal(logits(adapted_graphdef, adapted, batch), reference)  # B = 0: bit for bit

    trained = perturb_adapters(adapted)
    out = logits(adapted_graphdef, trained, batch)
    assert np.abs(out - reference).max() > 1e-2  # the adapters do change the model
    merged = lora.merge(trained, info)
    assert jax.tree_util.tree_structure(merged) == jax.tree_util.tree_structure(params)
    np.testing.assert_allclose(logits(graphdef, merged, batch), out, rtol=1e-5, atol=1e-5)

    restored, adapters = lora.unmerge(trained)
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    expected = sum(int(np.prod(t.lead)) * t.rank * int(np.prod(t.in_shape) + np.prod(t.out_shape)) for t in info.targets)
    assert sum(x.size for x in jax.tree_util.tree_leaves(adapters)) == expected == 2 * 4 * (2 * (128 + 128) + 2 * (128 + 64) + 2 * (128 + 384) + (384 + 128))


def test_targets_presets_and_regex():
    config, graphdef, params = base()
    module = lora.abstract_module(graphdef, params)
    assert len(lora.find_targets(module, peft_spec(config))) == 2 * 7  # q, k, v, o, gate, up, down in each block
    attention = tiny_config("peft.lora_rank=4", "peft.lora_targets=attention")
    assert {t.name.split("/")[-1] for t in lora.find_targets(module, peft_spec(attention))} == {"q", "k", "v", "o"}
    only_v = tiny_config("peft.lora_rank=4", r"peft.lora_targets=blocks/1/attn/v/kernel$")
    assert [t.name for t in lora.find_targets(module, peft_spec(only_v))] == ["blocks/1/attn/v"]
    q = lora.find_targets(module, peft_spec(config))[0]
    assert q.scale == pytest.approx(16.0 / 4)
    rs = tiny_config("peft.lora_rank=4", "peft.rslora=true")
    assert lora.find_targets(module, peft_spec(rs))[0].scale == pytest.approx(16.0 / 2)


def test_bad_targets_and_ranks_are_one_line_errors():
    config, graphdef, params = base()
    module = lora.abstract_module(graphdef, params)
    with pytest.raises(UserError, match=r"peft.lora_targets='nothing_here' matches no linear layer; kernels are named like blocks/0/attn"):
        lora.find_targets(module, peft_spec(tiny_config("peft.lora_rank=4", "peft.lora_targets=nothing_here")))
    with pytest.raises(UserError, match=r"peft.lora_rank=100 exceeds the smaller side \(64\) of blocks/0/attn/k/kernel"):
        lora.find_targets(module, peft_spec(tiny_config("peft.lora_rank=100")))


def test_dropout_is_random_in_training_and_the_identity_in_evaluation():
    config, graphdef, params = base("peft.lora_dropout=0.5")
    g, adapted, info = lora.add_lora(graphdef, params, peft_spec(config), seed=0)
    trained = perturb_adapters(adapted)
    batch = random_batch(256, 2, 32)
    no_dropout_g, no_dropout, _ = lora.add_lora(graphdef, params, peft_spec(tiny_config("peft.lora_rank=4")), seed=0)
    reference = logits(no_dropout_g, perturb_adapters(no_dropout), batch)
    eval_out = logits(g, lora.with_runtime_leaves(trained, info, None), batch)
    np.testing.assert_array_equal(eval_out, reference)
    one = logits(g, lora.with_runtime_leaves(trained, info, jax.random.key(1)), batch)
    two = logits(g, lora.with_runtime_leaves(trained, info, jax.random.key(2)), batch)
    assert np.abs(one - two).max() > 1e-3 and np.abs(one - reference).max() > 1e-3
