"""Block-wise int8 / NF4 storage of frozen weights: layout, bytes per value, reconstruction
error, and QLoRA logits against the f32 base."""

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
from llm.peft.quant import NF4_LEVELS, QTensor, quantize, quantized_bytes
from llm.peft.spec import peft_spec
from llm.peft.split import combine, split_params


def test_roundtrip_error_and_layout():
    x = jax.random.normal(jax.random.key(0), (256, 4, 32), jnp.float32) * 0.02
    for fmt, bound in (("int8", 0.01), ("nf4", 0.12)):
        q = quantize(x, fmt, 64, lead=0, n_in=1)
        assert q.shape == x.shape and q[...].shape == x.shape and q[...].dtype == x.dtype
        assert q.scales.shape == (4, 128)
        assert q.codes.shape == ((128, 128) if fmt == "nf4" else (256, 128))
        rel = float(jnp.linalg.norm(q[...] - x) / jnp.linalg.norm(x))
        assert rel < bound, (fmt, rel)
        # The block's absolute maximum is reconstructed exactly.
        m = np.abs(np.asarray(x).reshape(4, 64, 128)).max(axis=1)
        np.testing.assert_allclose(np.abs(np.asarray(q[...]).reshape(4, 64, 128)).max(axis=1), m, rtol=1e-6)
    nf4 = quantize(jnp.asarray(np.repeat(NF4_LEVELS, 4)[:, None] * 3.0), "nf4", 64)
    np.testing.assert_array_equal(np.asarray(nf4[...])[:, 0], np.repeat(NF4_LEVELS, 4) * 3.0)  # the levels are exact
    with pytest.raises(UserError, match="in blocks of 64 rows"):
        quantize(jnp.ones((96, 8)), "nf4", 64)
    with pytest.raises(TypeError):
        q[0]


def test_scanned_leaves_keep_their_layer_axis():
    x = jax.random.normal(jax.random.key(1), (3, 128, 4, 32))
    q = quantize(x, "nf4", 64, lead=1, n_in=1)
    assert q.codes.shape == (3, 64, 128) and q.scales.shape == (3, 2, 128)
    one = quantize(x[1], "nf4", 64)
    np.testing.assert_array_equal(np.asarray(q[...][1]), np.asarray(one[...]))


@pytest.mark.parametrize("scan", [False, True])
def test_qlora_base_bytes_and_logits(scan):
    overrides = ("peft.lora_rank=8", f"model.scan_layers={str(scan).lower()}")
    config = tiny_config(*overrides)
    rules = AxisRules.from_config(config.mesh.rules, build_mesh(config.mesh, jax.devices()[:1]))
    graphdef, params, _ = init_params(model_spec(config, platform="cpu"), rules, 0)
    batch = random_batch(256, 2, 64)
    x = (batch["inputs"], batch["positions"], batch["segment_ids"])
    reference = np.asarray(jax.jit(lambda p: nnx.merge(graphdef, p)(*x))(params))
    n_base = sum(p.size for p in jax.tree_util.tree_leaves(params))
    errors = {}
    for fmt, max_bytes, max_error in (("nf4", 0.6, 0.25), ("int8", 1.1, 0.02)):
        g, trainable, frozen = split_params(graphdef, params, peft_spec(tiny_config(*overrides, f"peft.quantize={fmt}")), 0)
        kinds = {type(leaf).__name__ for leaf in jax.tree_util.tree_leaves(frozen, is_leaf=lambda v: isinstance(v, QTensor))}
        assert kinds == {"QTensor", "ArrayImpl"}  # matrices quantized, norm scales kept
        nbytes, values = quantized_bytes(frozen)
        assert values == n_base
        assert nbytes / values <= max_bytes, (fmt, nbytes / values)
        out = np.asarray(jax.jit(lambda t, f: nnx.merge(g, combine(t, f))(*x))(trainable, frozen))
        errors[fmt] = float(np.linalg.norm(out - reference) / np.linalg.norm(reference))
        assert errors[fmt] < max_error, errors
    print(f"QLoRA logits relative error vs f32 base: {errors}")
    assert errors["int8"] < errors["nf4"]
