"""The decoder-only language model: embeddings, a stack of blocks, final norm, LM head."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from llm.model.attention import attention_mask, block_starts
from llm.model.block import Block
from llm.model.layers import make_norm, param
from llm.model.rope import inverse_frequencies, rope_tables
from llm.model.spec import ModelSpec
from llm.parallel.rules import AxisRules

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_matmul": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _run_block(graphdef, state, x, rope, mask):
    return nnx.merge(graphdef, state)(x, rope, mask)


class Decoder(nnx.Module):
    def __init__(self, spec: ModelSpec, rules: AxisRules, rngs: nnx.Rngs):
        self.spec = spec
        self.rules = rules
        dt = spec.param_dtype
        self.embed = param(rngs, nnx.initializers.normal(spec.init_std), (spec.padded_vocab, spec.d_model), ("vocab", "embed"), dt)
        self.pos_embed = (
            param(rngs, nnx.initializers.normal(0.01), (spec.max_seq_len, spec.d_model), ("positions", "embed"), dt)
            if spec.is_gpt2
            else None
        )
        if spec.scan_layers:

            @nnx.split_rngs(splits=spec.n_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def make_blocks(layer_rngs: nnx.Rngs) -> Block:
                return Block(spec, rules, layer_rngs)

            self.blocks = make_blocks(rngs)
        else:
            self.blocks = nnx.List([Block(spec, rules, rngs) for _ in range(spec.n_layers)])
        self.final_norm = make_norm(spec.family, spec.d_model, spec.norm_eps, dt, rngs)
        self.head = (
            None
            if spec.tie_embeddings
            else param(rngs, nnx.initializers.normal(spec.init_std), (spec.d_model, spec.padded_vocab), ("embed", "vocab"), dt)
        )

    def hidden_states(
        self, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array | None = None
    ) -> jax.Array:
        """Final-norm hidden states (batch, length, d_model) in the compute dtype."""
        spec = self.spec
        cd = spec.compute_dtype
        x = jnp.take(self.embed[...], tokens, axis=0).astype(cd)
        if self.pos_embed is not None:
            x = x + jnp.take(self.pos_embed[...], positions, axis=0).astype(cd)
        x = self.rules.constrain(x, ("batch", "length", "act_embed"))
        # RoPE tables once for all layers (a scan over layers reads them as loop invariants).
        rope = self.rope_tables(positions)
        mask = attention_mask(segment_ids, tokens.shape[1])
        block_fn = _run_block
        if spec.remat != "none":
            block_fn = jax.checkpoint(_run_block, static_argnums=(0,), policy=REMAT_POLICIES[spec.remat])
        if spec.scan_layers:
            graphdef, stacked = nnx.split(self.blocks)

            def body(h, layer_state):
                return block_fn(graphdef, layer_state, h, rope, mask), None

            x, _ = jax.lax.scan(body, x, stacked)
        else:
            for block in self.blocks:
                graphdef, state = nnx.split(block)
                x = block_fn(graphdef, state, x, rope, mask)
        return self.final_norm(x)

    def init_cache(self, batch: int, length: int, dtype=None, blocks: Sequence[int] | None = None) -> dict:
        """An empty KV cache for `length` slots, split along the slots into blocks of the given
        sizes (default: one block): {"k", "v"}, each a tuple over blocks of either a tuple of
        per-layer (batch, kv_heads, n, head_dim) arrays, or one array with a leading layer axis
        when the blocks are scanned. Sharded like the attention activations. A step reads only
        the blocks up to the one its tokens land in (see hidden_states_cached)."""
        spec = self.spec
        dtype = dtype or spec.compute_dtype
        blocks = tuple(blocks or (length,))
        if sum(blocks) != length:
            raise ValueError(f"cache blocks {blocks} do not add up to {length} slots")
        names = ("batch", "act_kv_heads", "length", None)

        def block(n: int):
            shape = (batch, spec.n_kv_heads, n, spec.head_dim)
            if spec.scan_layers:
                return self.rules.constrain(jnp.zeros((spec.n_layers, *shape), dtype), ("layers", *names))
            return tuple(self.rules.constrain(jnp.zeros(shape, dtype), names) for _ in range(spec.n_layers))

        return {"k": tuple(block(n) for n in blocks), "v": tuple(block(n) for n in blocks)}

    def cache_blocks(self, cache: dict) -> list[jax.Array]:
        """One array per KV-cache block (layer 0's when the layers are a tuple): its shape[-2]
        is the block's slots (see init_cache)."""
        return [kb if self.spec.scan_layers else kb[0] for kb in cache["k"]]

    def rope_tables(self, positions: jax.Array) -> tuple[jax.Array, jax.Array] | None:
        """RoPE (cos, sin) for positions (B, T), shared by every layer's attention; None for a
        model without RoPE.

        The decode loop computes them one step ahead and carries them: tables computed inside
        the step get fused, cos/sin and all, into each layer's q and k rotation by XLA, which
        then evaluates them once per element (heads x head_dim times too often) in every layer."""
        if self.spec.is_gpt2:
            return None
        spec = self.spec
        return rope_tables(positions, inverse_frequencies(spec.head_dim, spec.rope_theta, spec.rope_scaling))

    def hidden_states_cached(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        kv_valid: jax.Array,
        cache: dict,
        index: jax.Array,
        rope: tuple[jax.Array, jax.Array] | None = None,
        reach: int = 0,
    ) -> tuple[jax.Array, dict]:
        """Final-norm hidden states for tokens (B, T) that occupy cache slots index..index+T-1,
        which must lie inside cache block `reach` (static).

        `positions` (B, T) are the tokens' positions in their own sequence (RoPE / learned
        positions), so rows may start at different slots (left padding). `kv_valid` (B, S) marks
        the slots that hold a real token of the row; a query sees valid slots up to its own.
        Attention reads blocks 0..reach only: no slot beyond them can be visible yet, so the
        decode loop runs one specialised loop per block (llm.generate.engine.decode) and a step
        never touches the cache it has not reached. `rope`: `self.rope_tables(positions)` when
        the caller already has them (the decode loop carries the next step's). Returns (hidden,
        updated cache). Generation only: no remat, no segments.
        """
        spec = self.spec
        cd = spec.compute_dtype
        t = tokens.shape[1]
        x = jnp.take(self.embed[...], tokens, axis=0).astype(cd)
        if self.pos_embed is not None:
            x = x + jnp.take(self.pos_embed[...], positions, axis=0).astype(cd)
        x = self.rules.constrain(x, ("batch", "length", "act_embed"))
        k_blocks, v_blocks = cache["k"], cache["v"]
        blocks = self.cache_blocks(cache)
        start = block_starts(blocks)[reach]
        end = start + blocks[reach].shape[-2]
        slots = jnp.arange(end)
        query_slots = index + jnp.arange(t)
        mask = kv_valid[:, None, None, :end] & (slots[None, None, None, :] <= query_slots[None, None, :, None])
        if rope is None:
            rope = self.rope_tables(positions)
        if spec.scan_layers:
            graphdef, stacked = nnx.split(self.blocks)
            offset = index - start

            def body(carry, layer_state):
                h, k_all, v_all, layer = carry
                k_l = tuple(jax.lax.dynamic_index_in_dim(kb, layer, 0, keepdims=False) for kb in k_all[: reach + 1])
                v_l = tuple(jax.lax.dynamic_index_in_dim(vb, layer, 0, keepdims=False) for vb in v_all[: reach + 1])
                h, k_l, v_l = nnx.merge(graphdef, layer_state).cached(h, rope, mask, k_l, v_l, index, reach)

                def write_back(stack: jax.Array, layer_block: jax.Array) -> jax.Array:
                    # Only the new slots go back into the stack, not the whole layer.
                    new = jax.lax.dynamic_slice_in_dim(layer_block, offset, t, axis=2)[None]
                    return jax.lax.dynamic_update_slice(stack, new, (layer, 0, 0, offset, 0))

                k_all = (*k_all[:reach], write_back(k_all[reach], k_l[reach]), *k_all[reach + 1 :])
                v_all = (*v_all[:reach], write_back(v_all[reach], v_l[reach]), *v_all[reach + 1 :])
                return (h, k_all, v_all, layer + 1), None

            init = (x, k_blocks, v_blocks, jnp.zeros((), jnp.int32))
            (x, k_all, v_all, _), _ = jax.lax.scan(body, init, stacked)
            new_cache = {"k": k_all, "v": v_all}
        else:
            ks, vs = [], []
            for i, block in enumerate(self.blocks):
                k_l = tuple(kb[i] for kb in k_blocks)
                v_l = tuple(vb[i] for vb in v_blocks)
                x, k_l, v_l = block.cached(x, rope, mask, k_l, v_l, index, reach)
                ks.append(k_l)
                vs.append(v_l)
            # Back to blocks of per-layer arrays.
            new_cache = {"k": tuple(zip(*ks)), "v": tuple(zip(*vs))}
        return self.final_norm(x), new_cache

    def logits(self, hidden: jax.Array) -> jax.Array:
        """f32 logits over the real vocabulary; padded columns can never be predicted."""
        cd = self.spec.compute_dtype
        stored = None if self.head is None else self.head.get_value()
        if hasattr(stored, "matmul"):  # generation's packed head (llm.generate.layout)
            logits = stored.matmul(hidden, 1, cd)
        else:
            w = self.embed[...].T if self.head is None else self.head[...]
            logits = jnp.einsum("btd,dv->btv", hidden.astype(cd), w.astype(cd), preferred_element_type=jnp.float32)
        logits = self.rules.constrain(logits, ("batch", "length", "act_vocab"))
        if self.spec.padded_vocab != self.spec.vocab_size:
            valid = jnp.arange(self.spec.padded_vocab) < self.spec.vocab_size
            logits = jnp.where(valid, logits, -1e30)
        return logits

    def __call__(
        self, tokens: jax.Array, positions: jax.Array | None = None, segment_ids: jax.Array | None = None
    ) -> jax.Array:
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        return self.logits(self.hidden_states(tokens, positions, segment_ids))
