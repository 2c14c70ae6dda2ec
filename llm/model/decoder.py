"""The decoder-only language model: embeddings, a stack of blocks, final norm, LM head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from llm.model.attention import attention_mask
from llm.model.block import Block
from llm.model.layers import make_norm, param
from llm.model.spec import ModelSpec
from llm.parallel.rules import AxisRules

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_matmul": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _run_block(graphdef, state, x, positions, mask):
    return nnx.merge(graphdef, state)(x, positions, mask)


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
        mask = attention_mask(segment_ids, tokens.shape[1])
        block_fn = _run_block
        if spec.remat != "none":
            block_fn = jax.checkpoint(_run_block, static_argnums=(0,), policy=REMAT_POLICIES[spec.remat])
        if spec.scan_layers:
            graphdef, stacked = nnx.split(self.blocks)

            def body(h, layer_state):
                return block_fn(graphdef, layer_state, h, positions, mask), None

            x, _ = jax.lax.scan(body, x, stacked)
        else:
            for block in self.blocks:
                graphdef, state = nnx.split(block)
                x = block_fn(graphdef, state, x, positions, mask)
        return self.final_norm(x)

    def init_cache(self, batch: int, length: int, dtype=None) -> dict:
        """An empty KV cache for `length` slots: {"k", "v"}, each a tuple of per-layer
        (batch, kv_heads, length, head_dim) arrays, or one array with a leading layer axis when
        the blocks are scanned. Sharded like the attention activations."""
        spec = self.spec
        dtype = dtype or spec.compute_dtype
        shape = (batch, spec.n_kv_heads, length, spec.head_dim)
        names = ("batch", "act_kv_heads", "length", None)
        if spec.scan_layers:
            zeros = lambda: self.rules.constrain(jnp.zeros((spec.n_layers, *shape), dtype), ("layers", *names))
            return {"k": zeros(), "v": zeros()}
        zeros = lambda: tuple(self.rules.constrain(jnp.zeros(shape, dtype), names) for _ in range(spec.n_layers))
        return {"k": zeros(), "v": zeros()}

    def hidden_states_cached(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        kv_valid: jax.Array,
        cache: dict,
        index: jax.Array,
    ) -> tuple[jax.Array, dict]:
        """Final-norm hidden states for tokens (B, T) that occupy cache slots index..index+T-1.

        `positions` (B, T) are the tokens' positions in their own sequence (RoPE / learned
        positions), so rows may start at different slots (left padding). `kv_valid` (B, S) marks
        the slots that hold a real token of the row; a query sees valid slots up to its own.
        Returns (hidden, updated cache). Generation only: no remat, no segments.
        """
        spec = self.spec
        cd = spec.compute_dtype
        t = tokens.shape[1]
        x = jnp.take(self.embed[...], tokens, axis=0).astype(cd)
        if self.pos_embed is not None:
            x = x + jnp.take(self.pos_embed[...], positions, axis=0).astype(cd)
        x = self.rules.constrain(x, ("batch", "length", "act_embed"))
        slots = jnp.arange(kv_valid.shape[1])
        query_slots = index + jnp.arange(t)
        mask = kv_valid[:, None, None, :] & (slots[None, None, None, :] <= query_slots[None, None, :, None])
        if spec.scan_layers:
            graphdef, stacked = nnx.split(self.blocks)

            def body(carry, layer_state):
                h, k_all, v_all, layer = carry
                k_l = jax.lax.dynamic_index_in_dim(k_all, layer, 0, keepdims=False)
                v_l = jax.lax.dynamic_index_in_dim(v_all, layer, 0, keepdims=False)
                h, k_l, v_l = nnx.merge(graphdef, layer_state).cached(h, positions, mask, k_l, v_l, index)
                # Write back only the new slots, not the whole layer.
                k_new = jax.lax.dynamic_slice_in_dim(k_l, index, t, axis=2)[None]
                v_new = jax.lax.dynamic_slice_in_dim(v_l, index, t, axis=2)[None]
                k_all = jax.lax.dynamic_update_slice(k_all, k_new, (layer, 0, 0, index, 0))
                v_all = jax.lax.dynamic_update_slice(v_all, v_new, (layer, 0, 0, index, 0))
                return (h, k_all, v_all, layer + 1), None

            init = (x, cache["k"], cache["v"], jnp.zeros((), jnp.int32))
            (x, k_all, v_all, _), _ = jax.lax.scan(body, init, stacked)
            new_cache = {"k": k_all, "v": v_all}
        else:
            ks, vs = [], []
            for block, k_l, v_l in zip(self.blocks, cache["k"], cache["v"]):
                x, k_l, v_l = block.cached(x, positions, mask, k_l, v_l, index)
                ks.append(k_l)
                vs.append(v_l)
            new_cache = {"k": tuple(ks), "v": tuple(vs)}
        return self.final_norm(x), new_cache

    def logits(self, hidden: jax.Array) -> jax.Array:
        """f32 logits over the real vocabulary; padded columns can never be predicted."""
        cd = self.spec.compute_dtype
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
