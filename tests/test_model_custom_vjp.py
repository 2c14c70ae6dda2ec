"""Hand-written gradients (RoPE rotation, gated MLP activation, blocked attention) equal the
autodiff of the plain formulas in f32; RoPE tables behind their CPU conditional keep their values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.model.attention import blocked_causal_attention
from llm.model.block import gated_activation
from llm.model.rope import inverse_frequencies, rope_tables, rotate


def plain_rotate(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def plain_attention(q, k, v, mask, scale, softcap_at):
    """Full-square causal attention (B, T, H, hd) over (B, S, KV, hd), differentiated by autodiff."""
    g = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)
    scores = jnp.einsum("bqhd,bshd->bhqs", q * scale, k)
    if softcap_at:
        scores = jnp.tanh(scores / softcap_at) * softcap_at
    scores = jnp.where(mask, scores, -1e30)
    return jnp.einsum("bhqs,bshd->bqhd", jax.nn.softmax(scores, axis=-1), v)


def test_rotate_gradient_equals_autodiff_of_the_formula():
    """Gradients w.r.t. x and w.r.t. (real-valued) positions through the broadcast tables."""
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (2, 5, 3, 8))
    cotangent = jax.random.normal(keys[1], x.shape)
    positions = jnp.arange(5.0)[None] + 0.3 * jax.random.normal(keys[2], (2, 5))
    inv = jnp.asarray(inverse_frequencies(8, 100.0))

    def loss(fn, x, positions):
        angles = positions[..., None] * inv
        return jnp.sum(fn(x, jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]) * cotangent)

    got = jax.grad(lambda *a: loss(rotate, *a), argnums=(0, 1))(x, positions)
    want = jax.grad(lambda *a: loss(plain_rotate, *a), argnums=(0, 1))(x, positions)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_rope_tables_are_cos_and_sin_of_the_angles():
    positions = jnp.asarray([[0, 1, 2, 7], [3, 4, 5, 6]])
    inv = inverse_frequencies(8, 10000.0)
    cos, sin = jax.jit(lambda p: rope_tables(p, inv))(positions)  # on CPU: the tables behind a conditional
    angles = np.asarray(positions, np.float32)[..., None] * inv
    np.testing.assert_allclose(cos[:, :, 0], np.cos(angles), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sin[:, :, 0], np.sin(angles), rtol=1e-6, atol=1e-6)


def test_rope_tables_are_evaluated_once_for_all_layers_on_cpu():
    """The compiled gradient of three rotations holds one cos (per branch of the conditional),
    not one per layer and direction."""
    inv = inverse_frequencies(8, 10000.0)

    def loss(x, positions):
        cos, sin = rope_tables(positions, inv)
        for _ in range(3):
            x = rotate(x * 1.5, cos, sin)
        return jnp.sum(x)

    x = jnp.ones((2, 4, 2, 8))
    hlo = jax.jit(jax.grad(loss)).lower(x, jnp.zeros((2, 4), jnp.int32)).compile().as_text()
    cosines = hlo.count(" cosine(")
    assert 1 <= cosines <= (2 if jax.default_backend() == "cpu" else 6), cosines


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
def test_gated_activation_gradient_equals_autodiff(activation):
    keys = jax.random.split(jax.random.key(1), 3)
    gate, up, cotangent = (3 * jax.random.normal(key, (4, 6)) for key in keys)
    act = jax.nn.silu if activation == "silu" else (lambda x: jax.nn.gelu(x, approximate=True))
    plain = lambda gate, up: act(gate) * up  # noqa: E731
    np.testing.assert_allclose(gated_activation(gate, up, activation), plain(gate, up), rtol=1e-6, atol=1e-6)
    got = jax.grad(lambda *a: jnp.sum(gated_activation(*a, activation) * cotangent), argnums=(0, 1))(gate, up)
    want = jax.grad(lambda *a: jnp.sum(plain(*a) * cotangent), argnums=(0, 1))(gate, up)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("softcap_at", [0.0, 1.5])
def test_blocked_attention_gradient_equals_autodiff_of_full_attention(softcap_at):
    """GQA, packed segments, a block that does not divide the length, with and without
    soft-capping (the xla implementation routes soft-capping to the blocked path, so this
    reference is the only autodiff one for it)."""
    keys = jax.random.split(jax.random.key(2), 4)
    q = jax.random.normal(keys[0], (2, 12, 4, 8))
    k, v = (jax.random.normal(key, (2, 12, 2, 8)) for key in keys[1:3])
    cotangent = jax.random.normal(keys[3], q.shape)
    segments = np.ones((2, 12), np.int32)
    segments[1, 5:] = 2
    mask = jnp.asarray((segments[:, :, None] == segments[:, None, :]) & np.tril(np.ones((12, 12), bool)))[:, None]

    def loss(blocked, q, k, v):
        out = blocked_causal_attention(q, k, v, mask, 5, 0.4, softcap_at) if blocked else plain_attention(q, k, v, mask, 0.4, softcap_at)
        return jnp.sum(out * cotangent)

    np.testing.assert_allclose(loss(True, q, k, v), loss(False, q, k, v), rtol=1e-5)
    got = jax.grad(lambda *a: loss(True, *a), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(lambda *a: loss(False, *a), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
