"""AdamW with warmup + decay, global-norm clipping and a weight-decay mask."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

_NO_DECAY_KEYS = ("embed", "pos_embed", "bias", "scale")


def learning_rate_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup to `lr`, then cosine / linear decay to `lr * min_lr_ratio` (or constant)."""
    peak, warmup = optim.lr, max(int(optim.warmup_steps), 0)
    floor = peak * optim.min_lr_ratio
    decay_steps = max(total_steps - warmup, 1)
    if optim.decay == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=optim.min_lr_ratio)
    elif optim.decay == "linear":
        decay = optax.linear_schedule(peak, floor, decay_steps)
    else:
        decay = optax.constant_schedule(peak)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def weight_decay_mask(params: Any) -> Any:
    """True where weight decay applies: matrices, not norms, biases or embeddings."""

    def decays(path, leaf) -> bool:
        names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
        return not any(n in _NO_DECAY_KEYS for n in names)

    return jax.tree_util.tree_map_with_path(decays, params)


def build_optimizer(
    optim: ml_collections.ConfigDict, total_steps: int, state_dtype: str = "float32"
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(optim, total_steps)
    mu_dtype = jnp.bfloat16 if state_dtype == "bfloat16" else jnp.float32
    chain = []
    if optim.clip_norm > 0:
        chain.append(optax.clip_by_global_norm(optim.clip_norm))
    chain.append(
        optax.adamw(
            schedule,
            b1=optim.b1,
            b2=optim.b2,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            mask=weight_decay_mask,
            mu_dtype=mu_dtype,
        )
    )
    return optax.chain(*chain), schedule
