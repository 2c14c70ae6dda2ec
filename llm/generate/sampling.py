"""Choosing the next token from logits: greedy, temperature, top-k, top-p (nucleus).

Pure functions over (batch, vocab) f32 logits so they run inside the decode loop and can be
tested on hand-built distributions. Which filters are active is static (`SamplingMode`, part
of the compiled program); the temperature and top-p values are traced, so changing them does
not recompile.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from llm.errors import UserError


class SamplingMode(NamedTuple):
    """The static part of the options, i.e. what the compiled program does."""

    greedy: bool
    top_k: int  # 0 = off
    top_p: bool  # whether the nucleus filter runs


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """temperature 0 = greedy (argmax); top_k 0 = off; top_p 1.0 = off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def mode(self) -> SamplingMode:
        """What shapes the compiled program; the temperature and top-p values do not."""
        if self.greedy:
            return SamplingMode(True, 0, False)
        return SamplingMode(False, self.top_k, self.top_p < 1.0)

    def validate(self, vocab_size: int) -> None:
        if not self.temperature >= 0.0:
            raise UserError(f"temperature={self.temperature} must be >= 0 (0 = greedy); pass --temperature 0 or a positive value")
        if self.top_k < 0 or self.top_k > vocab_size:
            raise UserError(f"top_k={self.top_k} must be in [0, {vocab_size}] (0 = off)")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"top_p={self.top_p} must be in (0, 1] (1 = off)")


def top_k_mask(logits: jax.Array, k: int) -> jax.Array:
    """Keep the k largest logits per row (ties at the k-th value are kept too)."""
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits >= kth, logits, -jnp.inf)


def top_p_mask(logits: jax.Array, top_p: jax.Array) -> jax.Array:
    """Keep the smallest set of most probable tokens whose probability sums to >= top_p.

    A token is kept when the mass of the tokens strictly more probable than it is < top_p, so the
    most probable token is always kept. Ties are broken by token id (stable sort).
    """
    order = jnp.argsort(-logits, axis=-1, stable=True)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = mass_before < top_p
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    return jnp.where(keep, logits, -jnp.inf)


def filtered_logits(logits: jax.Array, mode: SamplingMode, temperature: jax.Array, top_p: jax.Array) -> jax.Array:
    """Logits of the distribution we sample from: scaled by temperature, then top-k, then top-p.

    `temperature` and `top_p` are the traced values; `mode` says which filters apply.
    """
    x = logits / temperature
    if mode.top_k:
        x = top_k_mask(x, mode.top_k)
    if mode.top_p:
        x = top_p_mask(x, top_p)
    return x


def choose_tokens(
    key: jax.Array, logits: jax.Array, mode: SamplingMode, temperature: jax.Array, top_p: jax.Array
) -> jax.Array:
    """Next token per row (int32), from f32 logits (batch, vocab)."""
    if mode.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    x = filtered_logits(logits, mode, temperature, top_p)
    return jax.random.categorical(key, x, axis=-1).astype(jnp.int32)


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """log p(token) under the model's own distribution (f32 log-softmax of the raw logits, no
    temperature or filtering): what a forward pass over the sequence gives, which is what RL
    losses compare against."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
