"""Causal self-attention (multi-head, grouped-query or multi-query) that respects segment ids."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from llm.model.layers import Dense
from llm.model.rope import apply_rope, inverse_frequencies
from llm.model.spec import ModelSpec
from llm.parallel.rules import AxisRules


def attention_mask(segment_ids: jax.Array | None, q_len: int, kv_len: int | None = None) -> jax.Array | None:
    """Boolean (B, 1, T, S) mask: causal and same-segment. None when there are no segments."""
    if segment_ids is None:
        return None
    kv_len = kv_len or q_len
    causal = jnp.tril(jnp.ones((q_len, kv_len), dtype=bool), k=kv_len - q_len)
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (same & causal)[:, None, :, :]


def attend(q, k, v, mask, implementation: str) -> jax.Array:
    """jax.nn.dot_product_attention with the chosen backend.

    The cuDNN path gets packing as an additive bias plus `is_causal`, because a bias is what it
    documents honouring; the XLA path takes the boolean mask directly.
    """
    if mask is None:
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)
    if implementation == "cudnn":
        bias = jnp.where(mask, 0.0, jnp.finfo(q.dtype).min).astype(q.dtype)
        return jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=True, implementation="cudnn")
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


def cache_attention(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, mask: jax.Array) -> jax.Array:
    """Attention of q (B, T, H, hd) over a KV cache laid out (B, KV, S, hd), under a boolean
    mask (B, 1, T, S). Returns (B, T, H, hd).

    The cache keeps (batch, kv head) leading so both matmuls are batched dots with no transpose
    of the cache: `jax.nn.dot_product_attention` takes (B, S, KV, hd) and XLA would copy the whole
    cache into the other layout every decode step. Query head h reads kv head h // (H / KV), as
    in jax.nn.dot_product_attention and Hugging Face's repeat_kv. Scores and softmax are f32.
    """
    b, t, h, hd = q.shape
    kv = k_cache.shape[1]
    g = h // kv
    qg = q.reshape(b, t, kv, g, hd).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * t, hd)
    scores = jnp.einsum("bkqd,bksd->bkqs", qg, k_cache, preferred_element_type=jnp.float32)
    scores = scores.reshape(b, kv, g, t, -1) * (hd**-0.5)
    scores = jnp.where(mask[:, :, None], scores, -1e30)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_cache.dtype).reshape(b, kv, g * t, -1)
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v_cache)
    return out.reshape(b, kv, g, t, hd).transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd).astype(q.dtype)


class Attention(nnx.Module):
    def __init__(self, spec: ModelSpec, rules: AxisRules, rngs: nnx.Rngs):
        d, h, kv, hd = spec.d_model, spec.n_heads, spec.n_kv_heads, spec.head_dim
        bias = spec.qkv_bias or spec.is_gpt2
        common = dict(std=spec.init_std, dtype=spec.param_dtype, rngs=rngs)
        self.q = Dense((d,), (h, hd), ("embed",), ("heads", "kv"), use_bias=bias, **common)
        self.k = Dense((d,), (kv, hd), ("embed",), ("kv_heads", "kv"), use_bias=bias, **common)
        self.v = Dense((d,), (kv, hd), ("embed",), ("kv_heads", "kv"), use_bias=bias, **common)
        out_std = spec.init_std / (2 * spec.n_layers) ** 0.5
        self.o = Dense(
            (h, hd), (d,), ("heads", "kv"), ("embed",), use_bias=spec.is_gpt2,
            std=out_std, dtype=spec.param_dtype, rngs=rngs,
        )
        self.spec = spec
        self.rules = rules
        self.inv_freq = None if spec.is_gpt2 else tuple(inverse_frequencies(hd, spec.rope_theta, spec.rope_scaling))

    def _project(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """q, k, v for x (batch, length, d_model), rotated by their positions."""
        cd = self.spec.compute_dtype
        q = self.rules.constrain(self.q(x, cd), ("batch", "length", "act_heads", None))
        k = self.rules.constrain(self.k(x, cd), ("batch", "length", "act_kv_heads", None))
        v = self.rules.constrain(self.v(x, cd), ("batch", "length", "act_kv_heads", None))
        if self.inv_freq is not None:
            inv = jnp.asarray(self.inv_freq, jnp.float32)
            q = apply_rope(q, positions, inv)
            k = apply_rope(k, positions, inv)
        return q, k, v

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array | None) -> jax.Array:
        q, k, v = self._project(x, positions)
        out = attend(q, k, v, mask, self.spec.attention_impl)
        out = self.rules.constrain(out, ("batch", "length", "act_heads", None))
        return self.o(out, self.spec.compute_dtype)

    def cached(
        self,
        x: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        k_cache: jax.Array,
        v_cache: jax.Array,
        index: jax.Array,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Attention for generation over a preallocated KV cache (B, KV, S, hd) per tensor.

        x (B, T, d) holds the tokens of cache slots index .. index+T-1; their keys and values are
        written there and the queries attend over the whole cache under `mask` (B, 1, T, S),
        which the caller builds from slot validity and causality. Returns (out, k_cache, v_cache).
        """
        q, k, v = self._project(x, positions)
        k_cache = jax.lax.dynamic_update_slice(k_cache, k.transpose(0, 2, 1, 3).astype(k_cache.dtype), (0, 0, index, 0))
        v_cache = jax.lax.dynamic_update_slice(v_cache, v.transpose(0, 2, 1, 3).astype(v_cache.dtype), (0, 0, index, 0))
        cd = self.spec.compute_dtype
        out = cache_attention(q, k_cache.astype(cd), v_cache.astype(cd), mask)
        out = self.rules.constrain(out, ("batch", "length", "act_heads", None))
        return self.o(out, cd), k_cache, v_cache
