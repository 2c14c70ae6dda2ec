"""One pre-norm transformer block: attention + MLP (SwiGLU for Llama, GeGLU for Gemma, GELU for
GPT-2), with Gemma's post-attention / post-MLP norms when the spec asks for them."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from flax import nnx

from llm.model.attention import Attention
from llm.model.layers import Dense, make_norm
from llm.model.spec import ModelSpec
from llm.parallel.rules import AxisRules


_ACTIVATIONS = {"silu": jax.nn.silu, "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True)}


def _glu32(gate: jax.Array, up: jax.Array, activation: str) -> jax.Array:
    return _ACTIVATIONS[activation](gate.astype(jnp.float32)) * up.astype(jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def gated_activation(gate: jax.Array, up: jax.Array, activation: str) -> jax.Array:
    """activation(gate) * up (SwiGLU / GeGLU), computed in f32 and returned in gate's dtype.

    The gradient is written out as the f32 autodiff of the same formula, read from the saved
    gate and up: in bf16, plain autodiff rounded each intermediate of the activation and its
    derivative to bf16 and back, which on CPU took about twice the time of one f32 pass."""
    return _glu32(gate, up, activation).astype(gate.dtype)


def _gated_fwd(gate, up, activation):
    return gated_activation(gate, up, activation), (gate, up)


def _gated_bwd(activation, residuals, g):
    gate, up = residuals
    _, vjp = jax.vjp(lambda a, b: _glu32(a, b, activation), gate.astype(jnp.float32), up.astype(jnp.float32))
    d_gate, d_up = vjp(g.astype(jnp.float32))
    return d_gate.astype(gate.dtype), d_up.astype(up.dtype)


gated_activation.defvjp(_gated_fwd, _gated_bwd)


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
            activation = "gelu_tanh" if self.spec.mlp_activation == "gelu_tanh" else "silu"
            h = gated_activation(checkpoint_name(self.gate(x, cd), "mlpwi"), checkpoint_name(self.up(x, cd), "mlpwi"), activation)
        else:
            h = jax.nn.gelu(checkpoint_name(self.up(x, cd), "mlpwi"), approximate=True)
        h = rules.constrain(h, ("batch", "length", "act_mlp"))
        return checkpoint_name(self.down(h, cd), "mlpwo")


class Block(nnx.Module):
    def __init__(self, spec: ModelSpec, rules: AxisRules, rngs: nnx.Rngs):
        norm = lambda: make_norm(spec.family, spec.d_model, spec.norm_eps, spec.param_dtype, rngs, spec.norm_plus_one)  # noqa: E731
        self.attn_norm = norm()
        self.attn = Attention(spec, rules, rngs)
        self.mlp_norm = norm()
        self.mlp = MLP(spec, rngs)
        if spec.post_norms:
            self.attn_post_norm = norm()
            self.mlp_post_norm = norm()
        self.post_norms = spec.post_norms
        self.rules = rules

    def __call__(self, x: jax.Array, rope: tuple | None, mask: jax.Array | None, window: int = 0) -> jax.Array:
        """`rope`: the (cos, sin) tables of x's positions, computed once for all layers (None
        without RoPE); `mask`: the (B, 1, T, T) causal + segment (+ window) mask or None (causal
        only); `window`: this layer's window, static (see llm.model.attention.attend)."""
        return self.mlp_residual(self.attn_residual(x, self.attn(self.attn_norm(x), rope, mask, window)))

    def attn_residual(self, x: jax.Array, attended: jax.Array) -> jax.Array:
        """x plus the attention output (post-normed for Gemma); shared with the KV-cache decoder."""
        if self.post_norms:
            attended = self.attn_post_norm(attended)
        return self.rules.constrain(x + attended, ("batch", "length", "act_embed"))

    def mlp_residual(self, x: jax.Array) -> jax.Array:
        h = self.mlp(self.mlp_norm(x), self.rules)
        if self.post_norms:
            h = self.mlp_post_norm(h)
        return self.rules.constrain(x + h, ("batch", "length", "act_embed"))
