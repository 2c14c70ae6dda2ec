"""Causal self-attention (multi-head, grouped-query or multi-query) that respects segment ids."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from llm.model.layers import Dense
from llm.model.rope import rotate
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


def blocked_causal_attention(q, k, v, mask: jax.Array | None, block: int) -> jax.Array:
    """Causal attention of q (B, T, H, hd) over k, v (B, T, KV, hd), computed in query blocks of
    `block` positions that each read only the keys up to their own end. Returns (B, T, H, hd).

    Why: a full (T, T) score matrix spends half its matmuls, exponentials and mask selects on
    the masked upper triangle. On CPU that waste dominates: for the `small` config (8 x 256,
    8 heads of 64) XLA's dot_product_attention takes ~74 ms per layer forward + backward and this
    ~43 ms with 64-position blocks (measured on the 2-core dev VM), with the same values up to f32
    rounding. `mask` is the (B, 1, T, T) causal + same-segment mask (None = causal only). Scores
    and softmax are f32; the softmax is normalised after the value matmul (on (T, hd) rather
    than (T, S)), with the row max held constant, which changes no value or gradient.
    """
    b, t, h, hd = q.shape
    kvh = k.shape[2]
    g = h // kvh
    qt = (q * jnp.asarray(hd**-0.5, q.dtype)).reshape(b, t, kvh, g, hd).transpose(0, 2, 3, 1, 4)  # (B, KV, G, T, hd)
    kt = k.transpose(0, 2, 1, 3)  # (B, KV, S, hd)
    vt = v.transpose(0, 2, 1, 3)
    outs = []
    for start in range(0, t, block):
        end = min(start + block, t)
        scores = jnp.einsum(
            "bkgqd,bksd->bkgqs", qt[:, :, :, start:end], kt[:, :, :end], preferred_element_type=jnp.float32
        )
        if mask is None:
            visible = jnp.arange(start, end)[:, None] >= jnp.arange(end)[None, :]
        else:
            visible = mask[:, :, None, start:end, :end]  # (B, 1, 1, q, s)
        scores = jnp.where(visible, scores, -1e30)
        peak = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
        weights = jnp.exp(scores - peak)
        total = jnp.sum(weights, axis=-1, keepdims=True)
        out = jnp.einsum("bkgqs,bksd->bkgqd", weights.astype(v.dtype), vt[:, :, :end], preferred_element_type=jnp.float32)
        outs.append(out / total)
    out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd).astype(q.dtype)


def attend(q, k, v, mask, implementation: str, block: int = 0) -> jax.Array:
    """Causal attention with the chosen implementation.

    `blocked` is blocked_causal_attention (the fastest on CPU). The cuDNN path gets packing as
    an additive bias plus `is_causal`, because a bias is what it documents honouring; the XLA
    path takes the boolean mask directly.
    """
    if implementation == "blocked":
        return blocked_causal_attention(q, k, v, mask, block)
    if mask is None:
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)
    if implementation == "cudnn":
        bias = jnp.where(mask, 0.0, jnp.finfo(q.dtype).min).astype(q.dtype)
        return jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=True, implementation="cudnn")
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


Blocks = tuple  # a KV cache tensor split along its slots: (B, KV, n_j, hd) per block


def block_starts(blocks: Blocks) -> list[int]:
    """The first slot of each block (static)."""
    starts, total = [], 0
    for block in blocks:
        starts.append(total)
        total += block.shape[-2]
    return starts


def write_block(blocks: Blocks, new: jax.Array, index: jax.Array, reach: int) -> Blocks:
    """Write new (B, KV, t, hd) at slots index..index+t-1 of the blocked cache; the caller
    guarantees they lie inside block `reach` (static), so only that block is touched."""
    offset = index - block_starts(blocks)[reach]
    out = list(blocks)
    out[reach] = jax.lax.dynamic_update_slice(blocks[reach], new, (0, 0, offset, 0))
    return tuple(out)


def cache_attention(q: jax.Array, k_blocks: Blocks, v_blocks: Blocks, mask: jax.Array) -> jax.Array:
    """Attention of q (B, T, H, hd) over a KV cache laid out (B, KV, S, hd) and split along S
    into blocks, under a boolean mask (B, 1, T, S) over those blocks' slots. Returns (B, T, H, hd).

    The cache keeps (batch, kv head) leading so both matmuls are batched dots with no transpose
    of the cache: `jax.nn.dot_product_attention` takes (B, S, KV, hd) and XLA would copy the whole
    cache into the other layout every decode step. Query head h reads kv head h // (H / KV), as
    in jax.nn.dot_product_attention and Hugging Face's repeat_kv. Scores and softmax are f32.
    The caller passes only the blocks decoding has reached (see Decoder.hidden_states_cached).
    """
    b, t, h, hd = q.shape
    kv = k_blocks[0].shape[1]
    g = h // kv
    qg = q.reshape(b, t, kv, g, hd).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * t, hd)
    scores = [jnp.einsum("bkqd,bksd->bkqs", qg, k, preferred_element_type=jnp.float32) for k in k_blocks]
    scores = (scores[0] if len(scores) == 1 else jnp.concatenate(scores, axis=-1)).reshape(b, kv, g, t, -1) * (hd**-0.5)
    scores = jnp.where(mask[:, :, None], scores, -1e30)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_blocks[0].dtype).reshape(b, kv, g * t, -1)
    out = None
    for start, v in zip(block_starts(v_blocks), v_blocks):
        p = probs if len(v_blocks) == 1 else probs[..., start : start + v.shape[2]]
        part = jnp.einsum("bkqs,bksd->bkqd", p, v)
        out = part if out is None else out + part
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

    def _qkv(self, x: jax.Array, rope: tuple[jax.Array, jax.Array] | None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """q, k, v for x (batch, length, d_model), q and k rotated by `rope` (None: no RoPE)."""
        cd = self.spec.compute_dtype
        q = self.rules.constrain(self.q(x, cd), ("batch", "length", "act_heads", None))
        k = self.rules.constrain(self.k(x, cd), ("batch", "length", "act_kv_heads", None))
        v = self.rules.constrain(self.v(x, cd), ("batch", "length", "act_kv_heads", None))
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        return q, k, v

    def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array] | None, mask: jax.Array | None) -> jax.Array:
        """Causal self-attention of x (batch, length, d_model); `rope` holds the (cos, sin) tables
        of x's positions (llm.model.rope.rope_tables), None without RoPE."""
        q, k, v = self._qkv(x, rope)
        out = attend(q, k, v, mask, self.spec.attention_impl, self.spec.attention_block)
        out = self.rules.constrain(out, ("batch", "length", "act_heads", None))
        return self.o(out, self.spec.compute_dtype)

    def cached(
        self,
        x: jax.Array,
        rope: tuple[jax.Array, jax.Array] | None,
        mask: jax.Array,
        k_cache: Blocks,
        v_cache: Blocks,
        index: jax.Array,
        reach: int = 0,
    ) -> tuple[jax.Array, Blocks, Blocks]:
        """Attention for generation over a preallocated KV cache, (B, KV, S, hd) per tensor split
        into blocks along S (a tuple; see cache_attention).

        x (B, T, d) holds the tokens of cache slots index .. index+T-1, which lie inside block
        `reach` (static); their keys and values are written there and the queries attend over
        blocks 0..reach under `mask` (B, 1, T, slots of those blocks), which the caller builds
        from slot validity and causality. Later blocks are neither read nor written. `rope`
        holds the (cos, sin) tables of x's positions (llm.model.rope.rope_tables), None without
        RoPE. Returns (out, k_cache, v_cache).
        """
        q, k, v = self._qkv(x, rope)
        k_cache = write_block(k_cache, k.transpose(0, 2, 1, 3).astype(k_cache[0].dtype), index, reach)
        v_cache = write_block(v_cache, v.transpose(0, 2, 1, 3).astype(v_cache[0].dtype), index, reach)
        cd = self.spec.compute_dtype
        read = lambda blocks: tuple(c.astype(cd) for c in blocks[: reach + 1])
        out = cache_attention(q, read(k_cache), read(v_cache), mask)
        out = self.rules.constrain(out, ("batch", "length", "act_heads", None))
        return self.o(out, cd), k_cache, v_cache
