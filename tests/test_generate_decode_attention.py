"""llm.generate.decode_attention: the one-call decode attention kernel equals the XLA path
(cache_attention) for grouped heads, several cache blocks, masks (a row with nothing visible
too), scale and soft-cap, over f32 and bf16 caches; a bf16 model decodes with it the same greedy
tokens as with XLA's attention; f32 caches, prefill and sharded meshes keep the XLA path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tiny_config

from llm.generate import decode_attention as da
from llm.generate.generator import Generator
from llm.generate.kv_cache import cache_attention
from llm.model.build import init_params
from llm.model.spec import model_spec
from llm.parallel.mesh import build_mesh
from llm.parallel.rules import AxisRules

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu" or not da.available(), reason="the kernel is the CPU decode path (x86: AVX2 + FMA)"
)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("b,kv,g,hd,sizes,scale,cap", [
    (16, 8, 1, 64, (64, 32, 32), None, 0.0),
    (3, 2, 3, 16, (5, 7, 1), 0.3, 3.0),
    (2, 1, 8, 8, (9,), None, 0.0),
])
def test_kernel_equals_xla_attention(dtype, b, kv, g, hd, sizes, scale, cap):
    rng = np.random.default_rng(b * 100 + g)
    ks = tuple(jnp.asarray(rng.standard_normal((b, kv, n, hd)), dtype) for n in sizes)
    vs = tuple(jnp.asarray(rng.standard_normal((b, kv, n, hd)), dtype) for n in sizes)
    q = jnp.asarray(rng.standard_normal((b, 1, kv * g, hd)), jnp.float32)
    mask = jnp.asarray(rng.random((b, 1, 1, sum(sizes))) < 0.6).at[:, :, :, -1].set(True).at[0].set(False)
    got = jax.jit(lambda q, ks, vs, m: da.kernel_attention(q, ks, vs, m, scale, cap))(q, ks, vs, mask)
    widen = lambda blocks: tuple(x.astype(jnp.float32) for x in blocks)  # noqa: E731
    want = cache_attention(q, widen(ks), widen(vs), mask, scale, cap)
    assert got.shape == want.shape == (b, 1, kv * g, hd)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_routes_only_one_token_steps_over_a_bf16_cache_on_one_device():
    q1 = jnp.zeros((2, 1, 4, 16), jnp.bfloat16)
    bf16, f32 = (jnp.zeros((2, 2, 8, 16), jnp.bfloat16),), (jnp.zeros((2, 2, 8, 16), jnp.float32),)
    assert da.applies(q1, bf16, single_device=True)
    assert not da.applies(q1, f32, single_device=True)  # XLA's f32 attention is as fast
    assert not da.applies(jnp.zeros((2, 3, 4, 16), jnp.bfloat16), bf16, single_device=True)  # prefill
    assert not da.applies(q1, bf16, single_device=False)
    assert not da.applies(jnp.zeros((2, 1, 4, 12), jnp.bfloat16), (jnp.zeros((2, 2, 8, 12), jnp.bfloat16),), True)


def test_bf16_model_decodes_the_same_tokens_as_with_xla_attention(monkeypatch):
    config = tiny_config("precision.compute=bfloat16")
    rules = AxisRules.from_config(config.mesh.rules, build_mesh(config.mesh, jax.devices()[:1]))
    graphdef, params, _ = init_params(model_spec(config, platform="cpu"), rules, 0)
    prompts = [list(np.random.default_rng(i).integers(1, 256, 4 + 5 * i)) for i in range(3)]
    calls = []
    kernel = da.kernel_attention
    monkeypatch.setattr(da, "kernel_attention", lambda *a: calls.append(a[0].shape) or kernel(*a))
    gen = Generator(graphdef, params)
    ours = gen.generate(prompts, max_new_tokens=16, return_logprobs=True)
    assert calls and all(shape[1] == 1 for shape in calls)  # traced into the decode steps only
    monkeypatch.setattr(da, "available", lambda: False)
    theirs = Generator(graphdef, params).generate(prompts, max_new_tokens=16, return_logprobs=True)
    assert [c.tokens for c in ours] == [c.tokens for c in theirs]
    for a, b in zip(ours, theirs):  # bf16 activations either way; the kernel keeps probs in f32
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=0.05)


def test_bf16_cache_write_updates_in_place_with_the_same_bits():
    """update_slice on a bf16 cache writes the bits dynamic_update_slice writes, and the compiled
    program no longer widens the whole buffer to f32 around the update (XLA:CPU does so for a
    bf16 dynamic-update-slice)."""
    from llm.generate.kv_cache import update_slice

    rng = np.random.default_rng(0)
    cache = jnp.asarray(rng.standard_normal((2, 3, 16, 8)), jnp.bfloat16)
    new = jnp.asarray(rng.standard_normal((2, 3, 1, 8)), jnp.float32)
    index = jnp.int32(5)
    got = jax.jit(lambda c, n, i: update_slice(c, n, (0, 0, i, 0)))(cache, new, index)
    want = jax.lax.dynamic_update_slice(cache, new.astype(jnp.bfloat16), (0, 0, 5, 0))
    np.testing.assert_array_equal(np.asarray(got).view(np.uint16), np.asarray(want).view(np.uint16))
    hlo = jax.jit(lambda c, n, i: update_slice(c, n, (0, 0, i, 0))).lower(cache, new, index).compile().as_text()
    assert "f32[2,3,16,8]" not in hlo
