"""Rotary position embeddings, with Llama-3 style frequency scaling.

Uses the half-split layout of Hugging Face Llama (rotate_half), so imported weights need no
permutation of q/k.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def inverse_frequencies(head_dim: int, theta: float, scaling: tuple = ()) -> np.ndarray:
    """Per-pair inverse frequencies; `scaling` is (), ("llama3", factor, low, high, orig_max) or
    ("linear", factor)."""
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if not scaling:
        return inv.astype(np.float32)
    if scaling[0] == "linear":  # positions divided by the factor (Gemma 3's global layers)
        return (inv / scaling[1]).astype(np.float32)
    kind, factor, low_freq_factor, high_freq_factor, original_max = scaling
    if kind != "llama3":
        raise ValueError(f"unknown rope scaling type {kind!r}; supported: llama3, linear")
    low_freq_wavelen = original_max / low_freq_factor
    high_freq_wavelen = original_max / high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_freq_wavelen, inv / factor, inv)
    smooth = (original_max / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def rope_tables(positions: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """(cos, sin), each (batch, length, 1, head_dim / 2) f32, for positions (batch, length)."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # (B, T, hd/2)

    def tables(angles: jax.Array) -> tuple[jax.Array, jax.Array]:
        return jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]

    if jax.default_backend() != "cpu":
        return tables(angles)
    # Both branches are the same function, so the predicate never changes a value. The
    # conditional makes the tables a stored buffer: XLA:CPU otherwise fuses their cos / sin into
    # every layer's rotation, forward and backward, evaluating them per element of q and k (an
    # optimization_barrier does not stop it: XLA:CPU removes barriers before fusion).
    return jax.lax.cond(jnp.any(positions < 0), tables, tables, angles)


def _turn(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x rotated by the angles whose (cos, sin) are given, computed in f32, returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    x1, x2 = x32[..., :half], x32[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


@jax.custom_vjp
def rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x (batch, length, heads, head_dim) by precomputed tables (see rope_tables).

    The decoder computes the tables once per forward and shares them across layers. The
    gradient is written out: a rotation's transpose is the rotation by minus the angle, one
    pass over the cotangent, where autodiff summed two zero-padded halves (the `small` bf16
    train step ran 1-3% faster, interleaved A/B on the shared 2-core VM)."""
    return _turn(x, cos, sin)


def _rotate_fwd(x, cos, sin):
    return _turn(x, cos, sin), (x, cos, sin)


def _rotate_bwd(residuals, g):
    x, cos, sin = residuals
    g32 = g.astype(jnp.float32)
    half = g.shape[-1] // 2
    g1, g2 = g32[..., :half], g32[..., half:]
    dx = jnp.concatenate([g1 * cos + g2 * sin, g2 * cos - g1 * sin], axis=-1).astype(x.dtype)
    # The tables' cotangents, summed over the axes they were broadcast along (unused in
    # training, where the tables come from integer positions: XLA then drops these sums).
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., :half], x32[..., half:]
    dcos, dsin = g1 * x1 + g2 * x2, g2 * x1 - g1 * x2
    return dx, _sum_to(dcos, cos.shape).astype(cos.dtype), _sum_to(dsin, sin.shape).astype(sin.dtype)


def _sum_to(d: jax.Array, shape: tuple) -> jax.Array:
    """d summed over the axes that broadcasting stretched to reach d's shape from `shape`."""
    lead = d.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape) if n == 1 and d.shape[i + lead] != 1)
    return jnp.sum(d, axis=axes).reshape(shape) if axes else d


rotate.defvjp(_rotate_fwd, _rotate_bwd)
