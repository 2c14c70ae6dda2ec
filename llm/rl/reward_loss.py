"""The reward model's Bradley-Terry loss as a pure function of per-pair scalar rewards.

As `trl.RewardTrainer.compute_loss` (TRL 1.16): mean over pairs of
-logsigmoid(r_chosen - r_rejected - margin), plus center_rewards_coefficient *
mean((r_chosen + r_rejected)^2), which keeps the rewards centred on zero.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from llm.errors import ConfigError, UserError


def reward_loss(
    chosen_rewards: jax.Array,
    rejected_rewards: jax.Array,
    *,
    margin: jax.Array | None = None,
    center_rewards_coefficient: float | None = None,
    pair_mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, metrics) for (pairs,) rewards; `margin` is TRL's optional per-pair margin column.

    Metrics as TRL's RewardTrainer logs them (`accuracy`, `margin` = mean r_c - r_r without the
    margin column, `mean_reward` / `min_reward` / `max_reward` over both answers) plus
    `rewards/chosen` and `rewards/rejected`, the two means, which TRL does not log.
    `pair_mask` (bool, (pairs,)) drops empty slots of a fixed-shape batch.
    """
    c_coef = center_rewards_coefficient
    if c_coef is not None and not (math.isfinite(c_coef) and c_coef >= 0):
        raise ConfigError(f"rm.center_rewards_coefficient={c_coef} must be a finite number >= 0 (TRL suggests 0.01), or None")
    shapes = {name: tuple(jnp.shape(a)) for name, a in
              dict(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards, margin=margin, pair_mask=pair_mask).items()
              if a is not None}
    if len(shapes["chosen_rewards"]) != 1 or len(set(shapes.values())) != 1:
        raise UserError(f"reward loss inputs must all be (pairs,) arrays of one length; got shapes {shapes}")
    mask = jnp.ones(jnp.shape(chosen_rewards), bool) if pair_mask is None else jnp.asarray(pair_mask, bool)
    count = jnp.maximum(jnp.sum(mask), 1)

    def mean(x: jax.Array) -> jax.Array:
        return jnp.sum(jnp.where(mask, x, 0.0)) / count

    r_c = jnp.where(mask, jnp.asarray(chosen_rewards, jnp.float32), 0.0)
    r_r = jnp.where(mask, jnp.asarray(rejected_rewards, jnp.float32), 0.0)
    diff = r_c - r_r
    shifted = diff if margin is None else diff - jnp.asarray(margin, jnp.float32)
    loss = mean(-jax.nn.log_sigmoid(shifted))
    if c_coef:
        loss = loss + c_coef * mean((r_c + r_r) ** 2)

    r_c, r_r, diff = jax.lax.stop_gradient((r_c, r_r, diff))
    both = jnp.concatenate([r_c, r_r])
    both_mask = jnp.concatenate([mask, mask])
    metrics = {
        "accuracy": mean((diff > 0).astype(jnp.float32)),
        "margin": mean(diff),
        "mean_reward": (mean(r_c) + mean(r_r)) / 2,
        "min_reward": jnp.min(jnp.where(both_mask, both, jnp.inf)),
        "max_reward": jnp.max(jnp.where(both_mask, both, -jnp.inf)),
        "rewards/chosen": mean(r_c),
        "rewards/rejected": mean(r_r),
    }
    return loss, metrics
