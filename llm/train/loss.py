"""Token-level cross entropy in f32, summed (not averaged) so micro-batches add up exactly."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx


def cross_entropy_sums(
    logits: jax.Array, targets: jax.Array, mask: jax.Array, z_loss: float = 0.0
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(sum of token losses incl. z-loss, sum of plain cross entropy, number of target tokens)."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = (lse - target_logit) * mask
    total = nll + z_loss * jnp.square(lse) * mask if z_loss else nll
    return total.sum(), nll.sum(), mask.sum()


def lm_loss_fn(graphdef: nnx.GraphDef, z_loss: float = 0.0, combine: Callable | None = None) -> Callable:
    """Next-token loss for a decoder: `(trainable, frozen, batch, rng) -> (loss_sum, aux)`.

    `combine(trainable, frozen)` rebuilds the full parameter tree (identity in pretraining,
    where everything is trainable and `frozen` is empty).

    aux holds `tokens` (the denominator) and `nll_sum`; the step divides by the token count of
    the whole (accumulated) batch, so 4 micro-batches of B/4 equal one batch of B.
    """

    def loss_fn(trainable, frozen, batch, rng):
        del rng  # no dropout in pretraining; fine-tuning losses use it
        params = trainable if combine is None else combine(trainable, frozen)
        model = nnx.merge(graphdef, params)
        logits = model(batch["inputs"], batch["positions"], batch["segment_ids"])
        total, nll, count = cross_entropy_sums(logits, batch["targets"], batch["loss_mask"], z_loss)
        return total, {"tokens": count, "nll_sum": nll}

    return loss_fn
