"""The decoder's forward pass for generation: the model's own layers (llm.model), with attention
reading and writing the blocked KV cache (llm.generate.kv_cache) instead of attending over the
whole sequence. Used by prefill (the prompts in one pass) and by each decode step.

Generation only: no remat, no segments. Everything but attention is the training path's code
(embeddings, q/k/v and output projections, norms, MLP, LM head), so adapters and stored kernel
forms (llm.model.kernel) decode exactly as they train.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from llm.generate.decode_attention import decode_attention
from llm.generate.kv_cache import Blocks, block_arrays, block_starts, first_visible_block, update_slice, write_block


def attention_cached(
    attn: nnx.Module,
    x: jax.Array,
    rope: tuple[jax.Array, jax.Array] | None,
    mask: jax.Array,
    k_cache: Blocks,
    v_cache: Blocks,
    index: jax.Array,
    reach: int = 0,
    first: int = 0,
) -> tuple[jax.Array, Blocks, Blocks]:
    """`attn` (llm.model.attention.Attention) over a preallocated KV cache, (B, KV, S, hd) per
    tensor split into blocks along S.

    x (B, T, d) holds the tokens of cache slots index .. index+T-1, which lie inside block
    `reach` (static); their keys and values are written there and the queries attend over
    blocks first..reach under `mask` (B, 1, T, slots of blocks 0..reach), which the caller
    builds from slot validity, causality and the layer's window; `first` (static) skips the
    blocks wholly outside the window. Later blocks are neither read nor written. A one-token
    step on CPU attends with one kernel call (llm.generate.decode_attention). `rope`
    holds the (cos, sin) tables of x's positions, None without RoPE. Returns (out, k_cache,
    v_cache).
    """
    q, k, v = attn.qkv(x, rope)
    k_cache = write_block(k_cache, k.transpose(0, 2, 1, 3).astype(k_cache[0].dtype), index, reach)
    v_cache = write_block(v_cache, v.transpose(0, 2, 1, 3).astype(v_cache[0].dtype), index, reach)
    spec = attn.spec
    read = lambda blocks: tuple(c.astype(spec.compute_dtype) for c in blocks[first : reach + 1])  # noqa: E731
    mask = mask[..., block_starts(k_cache)[first] :]
    mesh = attn.rules.mesh
    out = decode_attention(q, read(k_cache), read(v_cache), mask, spec.attention_scale, spec.attn_softcap,
                           single_device=mesh is None or mesh.size == 1)
    return attn.project(out), k_cache, v_cache


def block_cached(
    block: nnx.Module,
    x: jax.Array,
    rope: tuple[jax.Array, jax.Array] | None,
    mask: jax.Array,
    k_cache: Blocks,
    v_cache: Blocks,
    index: jax.Array,
    reach: int = 0,
    first: int = 0,
) -> tuple[jax.Array, Blocks, Blocks]:
    """`block` (llm.model.block.Block) with its attention over this layer's blocked KV cache
    (attention_cached). Returns (x, k_cache, v_cache)."""
    h, k_cache, v_cache = attention_cached(block.attn, block.attn_norm(x), rope, mask, k_cache, v_cache, index, reach, first)
    return block.mlp_residual(block.attn_residual(x, h)), k_cache, v_cache


def hidden_states_cached(
    model: nnx.Module,
    tokens: jax.Array,
    positions: jax.Array,
    kv_valid: jax.Array,
    cache: dict,
    index: jax.Array,
    rope: dict | None = None,
    reach: int = 0,
) -> tuple[jax.Array, dict]:
    """Final-norm hidden states of the decoder `model` for tokens (B, T) that occupy cache slots
    index..index+T-1, which must lie inside cache block `reach` (static).

    `positions` (B, T) are the tokens' positions in their own sequence (RoPE / learned
    positions), so rows may start at different slots (left padding). `kv_valid` (B, S) marks
    the slots that hold a real token of the row; a query sees valid slots up to its own, and
    on a windowed layer only the last `window` of them (a row's slots are consecutive, so slot
    distance is position distance). Attention reads blocks 0..reach at most: no slot beyond
    them can be visible yet, so the decode loop runs one specialised loop per block
    (llm.generate.engine.decode) and a step never touches the cache it has not reached; a
    windowed layer also skips the blocks that lie wholly behind its window. `rope`:
    `model.window_ropes(positions)` when the caller already has them (the decode loop carries
    the next step's). Returns (hidden, updated cache).
    """
    spec = model.spec
    t = tokens.shape[1]
    x = model.embed_tokens(tokens, positions)
    k_blocks, v_blocks = cache["k"], cache["v"]
    blocks = block_arrays(cache, spec.scan_layers)
    start = block_starts(blocks)[reach]
    end = start + blocks[reach].shape[-2]
    slots = jnp.arange(end)[None, None, None, :]
    query_slots = (index + jnp.arange(t))[None, None, :, None]
    visible = kv_valid[:, None, None, :end] & (slots <= query_slots)
    masks = {w: visible if not w else visible & (slots > query_slots - w) for w in sorted(set(spec.windows))}
    if rope is None:
        rope = model.window_ropes(positions)
    firsts = {w: first_visible_block(blocks, reach, w) for w in masks}
    if spec.scan_layers:
        graphdef, stacked = nnx.split(model.blocks)
        offset = index - start
        windows = sorted(masks)
        if len(windows) == 1:
            window_of = lambda layer: (rope[windows[0]], masks[windows[0]], firsts[windows[0]])  # noqa: E731
        else:  # layers differ (Gemma): each picks its tables and mask by index, reading every block
            kinds = jnp.asarray([windows.index(w) for w in spec.windows], jnp.int32)
            ropes = jax.tree_util.tree_map(lambda *tables: jnp.stack(tables), *[rope[w] for w in windows])
            stacked_masks = jnp.stack([masks[w] for w in windows])
            window_of = lambda layer: (  # noqa: E731
                jax.tree_util.tree_map(lambda tables: tables[kinds[layer]], ropes), stacked_masks[kinds[layer]], 0
            )

        def body(carry, layer_state):
            h, k_all, v_all, layer = carry
            layer_rope, mask, first = window_of(layer)
            k_l = tuple(jax.lax.dynamic_index_in_dim(kb, layer, 0, keepdims=False) for kb in k_all[: reach + 1])
            v_l = tuple(jax.lax.dynamic_index_in_dim(vb, layer, 0, keepdims=False) for vb in v_all[: reach + 1])
            h, k_l, v_l = block_cached(nnx.merge(graphdef, layer_state), h, layer_rope, mask, k_l, v_l, index, reach, first)

            def write_back(stack: jax.Array, layer_block: jax.Array) -> jax.Array:
                # Only the new slots go back into the stack, not the whole layer.
                new = jax.lax.dynamic_slice_in_dim(layer_block, offset, t, axis=2)[None]
                return update_slice(stack, new, (layer, 0, 0, offset, 0))

            k_all = (*k_all[:reach], write_back(k_all[reach], k_l[reach]), *k_all[reach + 1 :])
            v_all = (*v_all[:reach], write_back(v_all[reach], v_l[reach]), *v_all[reach + 1 :])
            return (h, k_all, v_all, layer + 1), None

        init = (x, k_blocks, v_blocks, jnp.zeros((), jnp.int32))
        (x, k_all, v_all, _), _ = jax.lax.scan(body, init, stacked)
        new_cache = {"k": k_all, "v": v_all}
    else:
        ks, vs = [], []
        for i, (block, w) in enumerate(zip(model.blocks, spec.windows)):
            k_l = tuple(kb[i] for kb in k_blocks)
            v_l = tuple(vb[i] for vb in v_blocks)
            x, k_l, v_l = block_cached(block, x, rope[w], masks[w], k_l, v_l, index, reach, firsts[w])
            ks.append(k_l)
            vs.append(v_l)
        # Back to blocks of per-layer arrays.
        new_cache = {"k": tuple(zip(*ks)), "v": tuple(zip(*vs))}
    return model.final_norm(x), new_cache
