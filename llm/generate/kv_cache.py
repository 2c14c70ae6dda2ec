"""The KV cache of generation: preallocated, laid out (batch, kv heads, slots, head_dim) per
layer, and split along the slots into blocks so a decode step reads only the blocks it has
reached (llm.generate.engine.decode runs one loop per block).

Cache = {"k": blocks, "v": blocks}; blocks is a tuple over cache blocks, each either a tuple of
per-layer (B, KV, n, hd) arrays, or one (n_layers, B, KV, n, hd) array when the model's layers
are scanned.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from llm.model.layers import softcap

Blocks = tuple  # one layer's K or V split along its slots: (B, KV, n_j, hd) per block

DECODE_BLOCK = 32


def block_sizes(prompt_slots: int, new_tokens: int, block: int = DECODE_BLOCK) -> tuple[int, ...]:
    """Slots per KV-cache block: the prompt's, then the new tokens' in blocks of `block`,
    `block`, then doubling (32, 32, 64, 128, ...).

    A decode step is bound by reading the cache, and a step reads only the blocks up to the
    one its token lands in (`decode` runs one loop per block), so on average it reads the
    prompt plus about half of the new-token slots instead of the whole preallocated cache.
    Each block costs one more compiled loop body, hence the doubling: a long generation gets
    a logarithmic number of loops while no step reads more than about twice what it needs.
    """
    sizes = [prompt_slots]
    left, size = new_tokens, block
    while left > 0:
        sizes.append(min(size, left))
        left -= sizes[-1]
        if len(sizes) > 2:
            size *= 2
    return tuple(sizes)


def init_cache(model: nnx.Module, batch: int, length: int, dtype=None, blocks: Sequence[int] | None = None) -> dict:
    """An empty KV cache of the decoder `model` for `length` slots, split into blocks of the given
    sizes (default: one block), in `dtype` (default: the compute dtype). Sharded like the
    attention activations."""
    spec, rules = model.spec, model.rules
    dtype = dtype or spec.compute_dtype
    blocks = tuple(blocks or (length,))
    if sum(blocks) != length:
        raise ValueError(f"cache blocks {blocks} do not add up to {length} slots")
    names = ("batch", "act_kv_heads", "length", None)

    def block(n: int):
        shape = (batch, spec.n_kv_heads, n, spec.head_dim)
        if spec.scan_layers:
            return rules.constrain(jnp.zeros((spec.n_layers, *shape), dtype), ("layers", *names))
        return tuple(rules.constrain(jnp.zeros(shape, dtype), names) for _ in range(spec.n_layers))

    return {"k": tuple(block(n) for n in blocks), "v": tuple(block(n) for n in blocks)}


def block_arrays(cache: dict, scanned: bool) -> list[jax.Array]:
    """One array per cache block (layer 0's when the layers are a tuple): its shape[-2] is the
    block's slots."""
    return [kb if scanned else kb[0] for kb in cache["k"]]


def block_starts(blocks: Sequence[jax.Array]) -> list[int]:
    """The first slot of each block (static)."""
    starts, total = [], 0
    for block in blocks:
        starts.append(total)
        total += block.shape[-2]
    return starts


def update_slice(buffer: jax.Array, update: jax.Array, indices: Sequence) -> jax.Array:
    """jax.lax.dynamic_update_slice that stays in place for a bf16 buffer on CPU: XLA:CPU
    widens a bf16 dynamic-update-slice to f32 (convert the whole buffer, update, convert back),
    which rewrote a whole cache block every decode step; on the 16-bit integer view it updates
    only the new slots. Same bits either way."""
    if buffer.dtype == jnp.bfloat16 and jax.default_backend() == "cpu":
        bits = jax.lax.bitcast_convert_type(buffer, jnp.uint16)
        new = jax.lax.bitcast_convert_type(update.astype(jnp.bfloat16), jnp.uint16)
        return jax.lax.bitcast_convert_type(jax.lax.dynamic_update_slice(bits, new, indices), jnp.bfloat16)
    return jax.lax.dynamic_update_slice(buffer, update, indices)


def write_block(blocks: Blocks, new: jax.Array, index: jax.Array, reach: int) -> Blocks:
    """Write new (B, KV, t, hd) at slots index..index+t-1 of the blocked cache; the caller
    guarantees they lie inside block `reach` (static), so only that block is touched."""
    offset = index - block_starts(blocks)[reach]
    out = list(blocks)
    out[reach] = update_slice(blocks[reach], new, (0, 0, offset, 0))
    return tuple(out)


def first_visible_block(blocks: Sequence[jax.Array], reach: int, window: int) -> int:
    """The first cache block a query in block `reach` can see through a window of `window` slots
    (0 = none): earlier blocks end at least `window` slots before any such query, so they are
    not read at all. Static, from the block sizes."""
    if not window:
        return 0
    starts = block_starts(blocks)
    first = 0
    for b in range(reach):
        if starts[b] + blocks[b].shape[-2] - 1 <= starts[reach] - window:
            first = b + 1
    return first


def cache_attention(
    q: jax.Array, k_blocks: Blocks, v_blocks: Blocks, mask: jax.Array, scale: float | None = None, softcap_at: float = 0.0
) -> jax.Array:
    """Attention of q (B, T, H, hd) over a KV cache laid out (B, KV, S, hd) and split along S
    into blocks, under a boolean mask (B, 1, T, S) over those blocks' slots. Returns (B, T, H, hd).

    The cache keeps (batch, kv head) leading so both matmuls are batched dots with no transpose
    of the cache: `jax.nn.dot_product_attention` takes (B, S, KV, hd) and XLA would copy the whole
    cache into the other layout every decode step. Query head h reads kv head h // (H / KV), as
    in jax.nn.dot_product_attention and Hugging Face's repeat_kv. Scores (times `scale`, default
    head_dim ** -0.5, soft-capped at `softcap_at` when > 0) and softmax are f32. The caller
    passes only the blocks decoding has reached and can see (llm.generate.cached_forward).
    """
    b, t, h, hd = q.shape
    kv = k_blocks[0].shape[1]
    g = h // kv
    qg = q.reshape(b, t, kv, g, hd).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * t, hd)
    scores = [jnp.einsum("bkqd,bksd->bkqs", qg, k, preferred_element_type=jnp.float32) for k in k_blocks]
    scale = hd**-0.5 if scale is None else scale
    scores = softcap((scores[0] if len(scores) == 1 else jnp.concatenate(scores, axis=-1)).reshape(b, kv, g, t, -1) * scale, softcap_at)
    scores = jnp.where(mask[:, :, None], scores, -1e30)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_blocks[0].dtype).reshape(b, kv, g * t, -1)
    out = None
    for start, v in zip(block_starts(v_blocks), v_blocks):
        p = probs if len(v_blocks) == 1 else probs[..., start : start + v.shape[2]]
        part = jnp.einsum("bkqs,bksd->bkqd", p, v)
        out = part if out is None else out + part
    return out.reshape(b, kv, g, t, hd).transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd).astype(q.dtype)
