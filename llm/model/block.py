"""One pre-norm transformer block: attention + MLP (SwiGLU for Llama, GELU for GPT-2)."""

from __future__ import annotations

import jax
from flax import nnx

from llm.model.attention import Attention
from llm.model.layers import Dense, make_norm
from llm.model.spec import ModelSpec
from llm.parallel.rules import AxisRules


class MLP(nnx.Module):
    def __init__(self, spec: ModelSpec, rngs: nnx.Rngs):
        d, f = spec.d_model, spec.d_ff
        common = dict(std=spec.init_std, dtype=spec.param_dtype, rngs=rngs)
        out_std = spec.init_std / (2 * spec.n_layers) ** 0.5
        self.gated = not spec.is_gpt2
        self.up = Dense((d,), (f,), ("embed",), ("mlp",), use_bias=spec.is_gpt2, **common)
        self.gate = Dense((d,), (f,), ("embed",), ("mlp",), use_bias=False, **common) if self.gated else None
        self.down = Dense(
            (f,), (d,), ("mlp",), ("embed",), use_bias=spec.is_gpt2,
            std=out_std, dtype=spec.param_dtype, rngs=rngs,
        )
        self.spec = spec

    def __call__(self, x: jax.Array, rules: AxisRules) -> jax.Array:
        cd = self.spec.compute_dtype
        if self.gated:
            h = jax.nn.silu(self.gate(x, cd)) * self.up(x, cd)
        else:
            h = jax.nn.gelu(self.up(x, cd), approximate=True)
        h = rules.constrain(h, ("batch", "length", "act_mlp"))
        return self.down(h, cd)


class Block(nnx.Module):
    def __init__(self, spec: ModelSpec, rules: AxisRules, rngs: nnx.Rngs):
        self.attn_norm = make_norm(spec.family, spec.d_model, spec.norm_eps, spec.param_dtype, rngs)
        self.attn = Attention(spec, rules, rngs)
        self.mlp_norm = make_norm(spec.family, spec.d_model, spec.norm_eps, spec.param_dtype, rngs)
        self.mlp = MLP(spec, rngs)
        self.rules = rules

    def __call__(self, x: jax.Array, rope: tuple | None, mask: jax.Array | None) -> jax.Array:
        """`rope`: the (cos, sin) tables of x's positions, computed once for all layers (None
        without RoPE); `mask`: the (B, 1, T, T) causal + segment mask or None (causal only)."""
        x = x + self.attn(self.attn_norm(x), rope, mask)
        x = self.rules.constrain(x, ("batch", "length", "act_embed"))
        x = x + self.mlp(self.mlp_norm(x), self.rules)
        return self.rules.constrain(x, ("batch", "length", "act_embed"))
