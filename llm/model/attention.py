"""Causal self-attention (multi-head, grouped-query or multi-query) that respects segment ids."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from flax import nnx

from llm.model.layers import Dense, RMSNorm
from llm.model.rope import rotate
from llm.model.splash import splash_attention, splash_block
from llm.model.spec import ModelSpec
from llm.parallel.rules import AxisRules


def attention_mask(segment_ids: jax.Array | None, length: int) -> jax.Array | None:
    """Boolean (B, 1, T, T) mask: causal and same-segment. None when there are no segments."""
    if segment_ids is None:
        return None
    causal = jnp.tril(jnp.ones((length, length), dtype=bool))
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (same & causal)[:, None, :, :]


def window_mask(mask: jax.Array | None, positions: jax.Array, window: int) -> jax.Array:
    """`mask` (None = causal only) narrowed to the keys at most window - 1 positions before the
    query, (B, 1, T, T). By positions, not columns, so packed documents (positions restart) and
    packed scoring trees (llm.eval) measure the distance within their own sequence, as Hugging
    Face's sliding-window mask does."""
    t = positions.shape[1]
    if mask is None:
        mask = jnp.tril(jnp.ones((t, t), dtype=bool))[None, None]
    near = (positions[:, :, None] - positions[:, None, :]) < window
    return mask & near[:, None]


def blocked_causal_attention(
    q, k, v, mask: jax.Array | None, block: int, scale: float | None = None, softcap_at: float = 0.0, window: int = 0
) -> jax.Array:
    """Causal attention of q (B, T, H, hd) over k, v (B, T, KV, hd), computed in query blocks of
    `block` positions that each read only the keys up to their own end. Returns (B, T, H, hd).

    Why: a full (T, T) score matrix spends half its matmuls, exponentials and mask selects on
    the masked upper triangle. On CPU that waste dominates: for the `small` config (8 x 256,
    8 heads of 64) XLA's dot_product_attention takes ~74 ms per layer forward + backward and this
    ~43 ms with 64-position blocks (measured on the 2-core dev VM), with the same values up to f32
    rounding. `mask` is the (B, 1, T, T) causal + same-segment (+ window) mask (None = causal
    only). `window` > 0: the caller guarantees no query sees a key `window` or more columns
    back (true when columns are positions within each packed document), so each block also
    skips the keys before its window. Scores (times `scale`, default head_dim ** -0.5, then
    soft-capped at `softcap_at`, 0 = off) and softmax are f32; the softmax is normalised after the value
    matmul (on (T, hd) rather than (T, S)). The gradient is written out (_blocked_core): every
    matmul takes compute-dtype operands with f32 accumulation and each block's query gradient
    is its own slice, where autodiff made bf16 products and summed zero-padded copies.
    """
    b, t, h, hd = q.shape
    kvh = k.shape[2]
    g = h // kvh
    scale = hd**-0.5 if scale is None else scale
    qt = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, kvh, g, hd).transpose(0, 2, 3, 1, 4)  # (B, KV, G, T, hd)
    kt = k.transpose(0, 2, 1, 3)  # (B, KV, S, hd)
    vt = v.transpose(0, 2, 1, 3)
    out = _blocked_core(block, float(softcap_at), window, qt, kt, vt, mask)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd)


def _spans(t: int, block: int, window: int):
    """(start, end, first) per query block: its queries [start, end) read keys [first, end)."""
    for start in range(0, t, block):
        end = min(start + block, t)
        yield start, end, (max(0, start - window + 1) if window else 0)


def _block_scores(qt, kt, mask, span, softcap_at: float, window: int):
    """One query block's masked f32 scores (B, KV, G, q, s) and the soft-cap's slope (None
    without soft-capping): d(capped)/d(raw)."""
    start, end, first = span
    scores = jnp.einsum(
        "bkgqd,bksd->bkgqs", qt[:, :, :, start:end], kt[:, :, first:end], preferred_element_type=jnp.float32
    )
    slope = None
    if softcap_at:
        capped = jnp.tanh(scores / softcap_at)
        scores, slope = capped * softcap_at, 1.0 - jnp.square(capped)
    if mask is None:
        rows, cols = jnp.arange(start, end)[:, None], jnp.arange(first, end)[None, :]
        visible = (rows >= cols) & ((rows - cols < window) if window else True)
    else:
        visible = mask[:, :, None, start:end, first:end]  # (B, 1, 1, q, s)
    return jnp.where(visible, scores, -1e30), slope


def _blocked_forward(block, softcap_at, window, qt, kt, vt, mask):
    """(out in the compute dtype, out f32, log-sum-exp of each query's scores f32 (B, KV, G, T))."""
    outs, lses = [], []
    for span in _spans(qt.shape[3], block, window):
        scores, slope = _block_scores(qt, kt, mask, span, softcap_at, window)
        peak = jnp.max(scores, axis=-1, keepdims=True)
        weights = jnp.exp(scores - peak)
        total = jnp.sum(weights, axis=-1, keepdims=True)
        out = jnp.einsum(
            "bkgqs,bksd->bkgqd", weights.astype(vt.dtype), vt[:, :, span[2] : span[1]], preferred_element_type=jnp.float32
        )
        outs.append(out / total)
        lses.append((peak + jnp.log(total))[..., 0])
    out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)
    return out.astype(qt.dtype), out, (lses[0] if len(lses) == 1 else jnp.concatenate(lses, axis=3))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _blocked_core(block, softcap_at, window, qt, kt, vt, mask):
    """Attention of scaled qt (B, KV, G, T, hd) over kt, vt (B, KV, S, hd) in the compute dtype."""
    return _blocked_forward(block, softcap_at, window, qt, kt, vt, mask)[0]


def _blocked_core_fwd(block, softcap_at, window, qt, kt, vt, mask):
    out, out32, lse = _blocked_forward(block, softcap_at, window, qt, kt, vt, mask)
    return out, (qt, kt, vt, mask, out32, lse)


def _blocked_core_bwd(block, softcap_at, window, residuals, d_out):
    """Per query block: the probabilities p from recomputed scores and the saved log-sum-exp
    (saving p instead ran no faster on the 2-core VM and holds T x S floats per layer), then the
    softmax gradient p * (dp - rowsum(d_out * out)); the key and value gradients of the blocks
    (each a prefix or window of the keys) add up in f32."""
    qt, kt, vt, mask, out32, lse = residuals
    cd, t, s = qt.dtype, qt.shape[3], kt.shape[2]
    d_out = d_out.astype(cd)
    row_dot = jnp.sum(d_out.astype(jnp.float32) * out32, axis=-1)  # (B, KV, G, T)
    dqs, dks, dvs = [], [], []
    for span in _spans(t, block, window):
        start, end, first = span
        scores, slope = _block_scores(qt, kt, mask, span, softcap_at, window)
        probs = jnp.exp(scores - lse[..., start:end, None])
        d_block = d_out[:, :, :, start:end]
        dp = jnp.einsum("bkgqd,bksd->bkgqs", d_block, vt[:, :, first:end], preferred_element_type=jnp.float32)
        ds = probs * (dp - row_dot[..., start:end, None])
        if slope is not None:
            ds = ds * slope
        ds = ds.astype(cd)
        dqs.append(jnp.einsum("bkgqs,bksd->bkgqd", ds, kt[:, :, first:end], preferred_element_type=jnp.float32))
        pad = ((0, 0), (0, 0), (first, s - end), (0, 0))
        q_block = qt[:, :, :, start:end]
        dks.append(jnp.pad(jnp.einsum("bkgqs,bkgqd->bksd", ds, q_block, preferred_element_type=jnp.float32), pad))
        dvs.append(jnp.pad(jnp.einsum("bkgqs,bkgqd->bksd", probs.astype(cd), d_block, preferred_element_type=jnp.float32), pad))
    dq = dqs[0] if len(dqs) == 1 else jnp.concatenate(dqs, axis=3)
    total = lambda xs: sum(xs[1:], xs[0])  # noqa: E731
    return dq.astype(cd), total(dks).astype(kt.dtype), total(dvs).astype(vt.dtype), None


_blocked_core.defvjp(_blocked_core_fwd, _blocked_core_bwd)


def attend(
    q, k, v, mask, implementation: str, block: int = 0, scale: float | None = None, softcap_at: float = 0.0, window: int = 0
) -> jax.Array:
    """Causal attention with the chosen implementation.

    `blocked` is blocked_causal_attention (the fastest on CPU). The cuDNN path gets packing as
    an additive bias plus `is_causal`, because a bias is what it documents honouring; the XLA
    path takes the boolean mask directly. Soft-capped scores (Gemma 2) are not something
    jax.nn.dot_product_attention computes, so they take the blocked path, in one block for xla.
    `window` (static) only lets the blocked path skip keys; `mask` already holds the window.
    """
    if implementation == "blocked" or softcap_at:
        return blocked_causal_attention(q, k, v, mask, block if implementation == "blocked" else q.shape[1], scale, softcap_at, window)
    if mask is None:
        return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True, implementation=implementation)
    if implementation == "cudnn":
        bias = jnp.where(mask, 0.0, jnp.finfo(q.dtype).min).astype(q.dtype)
        return jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale, is_causal=True, implementation="cudnn")
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation=implementation)


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
        if spec.qk_norm:  # Qwen3 / Gemma 3: RMSNorm over each head's vector, before RoPE
            self.q_norm = RMSNorm(hd, spec.norm_eps, spec.param_dtype, rngs, spec.norm_plus_one)
            self.k_norm = RMSNorm(hd, spec.norm_eps, spec.param_dtype, rngs, spec.norm_plus_one)
        self.spec = spec
        self.rules = rules

    def qkv(self, x: jax.Array, rope: tuple[jax.Array, jax.Array] | None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """q, k, v for x (batch, length, d_model), q and k rotated by `rope` (None: no RoPE)."""
        cd = self.spec.compute_dtype
        q = checkpoint_name(self.rules.constrain(self.q(x, cd), ("batch", "length", "act_heads", None)), "query_proj")
        k = checkpoint_name(self.rules.constrain(self.k(x, cd), ("batch", "length", "act_kv_heads", None)), "key_proj")
        v = checkpoint_name(self.rules.constrain(self.v(x, cd), ("batch", "length", "act_kv_heads", None)), "value_proj")
        if self.spec.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        return q, k, v

    def __call__(
        self, x: jax.Array, rope: tuple[jax.Array, jax.Array] | None, mask: jax.Array | None, window: int = 0
    ) -> jax.Array:
        """Causal self-attention of x (batch, length, d_model); `rope` holds the (cos, sin) tables
        of x's positions (llm.model.rope.rope_tables), None without RoPE; `mask` holds segments
        and this layer's window, `window` (static) lets the blocked path skip keys (see attend)."""
        q, k, v = self.qkv(x, rope)
        if self.rules.shards("length") > 1:  # context parallelism: each query slice attends to every key
            k = self.rules.constrain(k, ("batch", None, "act_kv_heads", None))
            v = self.rules.constrain(v, ("batch", None, "act_kv_heads", None))
        spec = self.spec
        if spec.attention_impl == "splash" and (mask is None or mask.ndim == 2):  # segment ids (llm.model.splash)
            out = splash_attention(q, k, v, mask, self.rules, spec.attention_scale, splash_block(spec.attention_block, q.shape[1]))
        else:  # other masks (packed scoring trees in llm.eval) take the XLA path under splash
            impl = "xla" if spec.attention_impl == "splash" else spec.attention_impl
            out = attend(q, k, v, mask, impl, spec.attention_block, spec.attention_scale, spec.attn_softcap, window)
        return self.project(out)

    def project(self, heads: jax.Array) -> jax.Array:
        """The output projection of the attended heads (batch, length, heads, head_dim)."""
        heads = checkpoint_name(self.rules.constrain(heads, ("batch", "length", "act_heads", None)), "context")
        return checkpoint_name(self.o(heads, self.spec.compute_dtype), "out_proj")
