"""The decoder-only language model: embeddings, a stack of blocks, final norm, LM head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from llm.model.attention import attention_mask, window_mask
from llm.model.block import Block
from llm.model.kernel import Kernel
from llm.model.layers import Dense, make_norm, param, softcap
from llm.model.rope import inverse_frequencies, rope_tables
from llm.model.spec import ModelSpec
from llm.parallel.rules import AxisRules

_save = jax.checkpoint_policies.save_only_these_names
_QKV = ("query_proj", "key_proj", "value_proj")
# What the backward pass may keep from each layer's forward instead of recomputing it, by the
# names the layers give their activations (jax.ad_checkpoint.checkpoint_name in Attention and
# MLP), as MaxText names its policies; everything else in the layer is recomputed.
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_matmul": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_dot_except_mlpwi": _save(*_QKV, "out_proj", "mlpwo"),
    "save_dot_with_context_except_mlp": _save(*_QKV, "context", "out_proj"),
    "save_dot_except_mlp": _save(*_QKV, "out_proj"),
    "save_qkv_proj": _save(*_QKV),
    "save_out_proj": _save("out_proj"),
}


def _run_block(graphdef, state, x, rope, mask, window=0):
    return nnx.merge(graphdef, state)(x, rope, mask, window)


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
        self.final_norm = make_norm(spec.family, spec.d_model, spec.norm_eps, dt, rngs, spec.norm_plus_one)
        self.head = (
            None
            if spec.tie_embeddings
            else param(rngs, nnx.initializers.normal(spec.init_std), (spec.d_model, spec.padded_vocab), ("embed", "vocab"), dt)
        )
        if spec.cpu_matmul:  # every linear layer takes the CPU bf16 route (llm.cpu.matmul)
            for _, module in nnx.iter_modules(self):
                if isinstance(module, Dense):
                    module.matmul_route = spec.cpu_matmul

    def embed_tokens(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
        """Token (and, for GPT-2, learned position) embeddings (batch, length, d_model) in the
        compute dtype."""
        cd = self.spec.compute_dtype
        x = jnp.take(self.embed[...], tokens, axis=0).astype(cd)
        if self.spec.embed_scale:  # Gemma; the factor is rounded to the compute dtype, as in transformers
            x = x * jnp.asarray(self.spec.d_model**0.5, cd)
        if self.pos_embed is not None:
            x = x + jnp.take(self.pos_embed[...], positions, axis=0).astype(cd)
        return self.rules.constrain(x, ("batch", "length", "act_embed"))

    def rope_tables(self, positions: jax.Array, local: bool = False) -> tuple[jax.Array, jax.Array] | None:
        """RoPE (cos, sin) for positions (B, T), computed once and shared by every layer's
        attention (a scan over layers reads them as loop invariants); None without RoPE.
        local: the tables of windowed layers (Gemma 3: their own unscaled base)."""
        if self.spec.is_gpt2:
            return None
        spec = self.spec
        if local and spec.rope_local_theta:
            return rope_tables(positions, inverse_frequencies(spec.head_dim, spec.rope_local_theta))
        return rope_tables(positions, inverse_frequencies(spec.head_dim, spec.rope_theta, spec.rope_scaling))

    def window_ropes(self, positions: jax.Array) -> dict[int, tuple | None]:
        """window -> RoPE tables, for each distinct layer window (0 = full attention)."""
        tables = {local: self.rope_tables(positions, local) for local in {w > 0 for w in self.spec.windows}}
        return {w: tables[w > 0] for w in sorted(set(self.spec.windows))}

    def layer_inputs(self, positions: jax.Array, mask: jax.Array | None) -> dict[int, tuple]:
        """window -> (rope tables, attention mask) for each distinct layer window (0 = full
        attention, whose mask is `mask` itself): computed once per forward, shared by layers."""
        return {
            w: (rope, mask if w == 0 else window_mask(mask, positions, w))
            for w, rope in self.window_ropes(positions).items()
        }

    def hidden_states(
        self, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array | None = None
    ) -> jax.Array:
        """Final-norm hidden states (batch, length, d_model) in the compute dtype."""
        # splash takes the segment ids themselves, never a dense (B, 1, T, T) mask (llm.model.splash)
        mask = segment_ids if self.spec.attention_impl == "splash" else attention_mask(segment_ids, tokens.shape[1])
        return self.run_blocks(self.embed_tokens(tokens, positions), positions, mask, skip_keys=True)

    def run_blocks(self, x: jax.Array, positions: jax.Array, mask: jax.Array | None, skip_keys: bool = False) -> jax.Array:
        """The blocks and final norm over embedded x under `mask` (None = causal only), each layer
        with its window. skip_keys: columns are positions within each document (packed
        training rows), so the blocked path may skip the keys outside a window outright."""
        spec = self.spec
        inputs = self.layer_inputs(positions, mask)
        block_fn = _run_block
        if spec.remat != "none":
            block_fn = jax.checkpoint(_run_block, static_argnums=(0, 5), policy=REMAT_POLICIES[spec.remat])
        static_window = lambda w: w if skip_keys else 0  # noqa: E731
        if spec.scan_layers:
            graphdef, stacked = nnx.split(self.blocks)
            if len(inputs) == 1:
                (window, (rope, layer_mask)), = inputs.items()

                def body(h, layer_state):
                    return block_fn(graphdef, layer_state, h, rope, layer_mask, static_window(window)), None

                x, _ = jax.lax.scan(body, x, stacked)
            else:  # layers differ (Gemma): each picks its window's tables and mask by index
                windows = sorted(inputs)
                kinds = jnp.asarray([windows.index(w) for w in spec.windows], jnp.int32)
                ropes = jax.tree_util.tree_map(lambda *t: jnp.stack(t), *[inputs[w][0] for w in windows])
                t = x.shape[1]
                causal = jnp.tril(jnp.ones((t, t), dtype=bool))[None, None]
                shape = inputs[windows[-1]][1].shape  # a window's mask: (B, 1, T, T)
                masks = jnp.stack([jnp.broadcast_to(causal if inputs[w][1] is None else inputs[w][1], shape) for w in windows])

                def body(h, xs):
                    layer_state, kind = xs
                    rope = jax.tree_util.tree_map(lambda t: t[kind], ropes)
                    return block_fn(graphdef, layer_state, h, rope, masks[kind], 0), None

                x, _ = jax.lax.scan(body, x, (stacked, kinds))
        else:
            for block, window in zip(self.blocks, spec.windows):
                graphdef, state = nnx.split(block)
                rope, layer_mask = inputs[window]
                x = block_fn(graphdef, state, x, rope, layer_mask, static_window(window))
        return self.final_norm(x)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """f32 logits over the real vocabulary; padded columns can never be predicted. An untied
        head stored as a Kernel (llm.model.kernel) multiplies itself."""
        cd = self.spec.compute_dtype
        head = self.embed[...].T if self.head is None else self.head.get_value()
        if isinstance(head, Kernel):
            logits = head.matmul(hidden, 1, cd).astype(jnp.float32)  # the loss and sampler read f32 logits
        else:
            logits = jnp.einsum("btd,dv->btv", hidden.astype(cd), head.astype(cd), preferred_element_type=jnp.float32)
        logits = softcap(self.rules.constrain(logits, ("batch", "length", "act_vocab")), self.spec.final_softcap)
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
