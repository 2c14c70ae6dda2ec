"""PPO's per-token rewards and clipped policy + value loss as pure jnp functions.

TRL 1.16 has no PPOTrainer; these transcribe TRL 0.x `PPOTrainer` (trl <= 0.19, the "PPOv2"
trainer) formulas:

    rewards  = -kl_coef * kl (per completion token), + the score at the row's last token
    (GAE and whitening: llm.rl.advantages.gae / masked_whiten)
    ratio    = exp(logps - old_logps)
    pg_loss  = masked_mean(max(-A * ratio, -A * clip(ratio, 1 - cliprange, 1 + cliprange)))
    v_clip   = clip(values, old_values - cliprange_value, old_values + cliprange_value)
    vf_loss  = 0.5 * masked_mean(max((values - R)^2, (v_clip - R)^2))
    loss     = pg_loss + vf_coef * vf_loss

Two places TRL 0.x differs, both from its off-by-one `padding_mask_p1`: it adds the score one
position *after* the last completion token (sequence_lengths + 1 when inside the tensor) and
trains the value head on that extra position too. Here the score goes on the last completion
token and the value loss uses the completion mask (TRL 0.x's older PPOTrainer and OpenRLHF place
it the same way), so no position outside the completion carries reward or value. The log-ratio
is clamped to +-log_ratio_clip before exp as a numerical guard (TRL has none).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from llm.errors import ConfigError, UserError
from llm.rl.advantages import masked_mean
from llm.rl.grpo_losses import token_kl

__all__ = ["ppo_loss", "ppo_token_rewards", "token_kl"]


def _check_shapes(name: str, token_arrays: dict[str, jax.Array], row_arrays: dict[str, jax.Array] | None = None) -> None:
    shapes = {k: tuple(jnp.shape(a)) for k, a in token_arrays.items()}
    first = next(iter(shapes.values()))
    rows = {k: tuple(jnp.shape(a)) for k, a in (row_arrays or {}).items()}
    if len(first) != 2 or any(s != first for s in shapes.values()) or any(s != first[:1] for s in rows.values()):
        raise UserError(f"{name} takes (B, T) {', '.join(shapes)} and (B,) {', '.join(rows) or '-'}; got {shapes | rows}")


def ppo_token_rewards(
    scores: jax.Array,
    logps: jax.Array,
    ref_logps: jax.Array,
    mask: jax.Array,
    kl_coef: float,
    estimator: str = "k1",
) -> jax.Array:
    """(B, T) per-token rewards: -kl_coef * token_kl(logps, ref_logps) on completion tokens (TRL
    0.x `kl_estimator` k1 default, or k3; k2 too), plus each row's score at its last completion
    token; 0 outside the mask. A row with no completion token gets no reward."""
    _check_shapes("ppo_token_rewards", dict(logps=logps, ref_logps=ref_logps, mask=mask), dict(scores=scores))
    if not (isinstance(kl_coef, (int, float)) and math.isfinite(kl_coef) and kl_coef >= 0):
        raise ConfigError(f"rl.kl_coef={kl_coef} must be a finite number >= 0 (TRL PPO 0.05)")
    m = jnp.asarray(mask) > 0
    # Outside the mask both log-probs count as equal (TRL fills both with INVALID_LOGPROB): kl 0.
    kl = token_kl(jnp.where(m, logps, 0.0), jnp.where(m, ref_logps, 0.0), estimator)
    rewards = jnp.where(m, -kl_coef * kl, 0.0)
    positions = jnp.arange(m.shape[1])
    last = jnp.max(jnp.where(m, positions, -1), axis=1, keepdims=True)
    at_last = positions[None, :] == last  # all False for an empty row (last = -1)
    return rewards + jnp.where(at_last, jnp.asarray(scores, jnp.float32)[:, None], 0.0)


def ppo_loss(
    logps: jax.Array,
    old_logps: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    values: jax.Array,
    old_values: jax.Array,
    returns: jax.Array,
    *,
    cliprange: float,
    cliprange_value: float,
    vf_coef: float,
    log_ratio_clip: float = 20.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(pg_loss + vf_coef * vf_loss, metrics) over (B, T) completion tokens, TRL 0.x PPOTrainer's
    loss (module docstring). `advantages` are the whitened GAE advantages, `returns` GAE's
    returns, `old_values` the rollout's values. Metrics, named as TRL logs them (detached):
    "policy/approxkl_avg" (0.5 * mean of the squared log-ratio over all B*T entries, padding
    counting as 0, as TRL), "policy/clipfrac_avg", "loss/policy_avg", "loss/value_avg",
    "val/clipfrac_avg", "val/ratio" (the mean ratio over all entries, padding as 1, as TRL)."""
    _check_shapes("ppo_loss", dict(logps=logps, old_logps=old_logps, advantages=advantages, mask=mask,
                                   values=values, old_values=old_values, returns=returns))
    for name, v in (("cliprange", cliprange), ("cliprange_value", cliprange_value), ("vf_coef", vf_coef)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ConfigError(f"{name}={v} must be a finite number >= 0 (TRL PPO: cliprange 0.2, cliprange_value 0.2, vf_coef 0.1)")
    if not (isinstance(log_ratio_clip, (int, float)) and math.isfinite(log_ratio_clip) and log_ratio_clip > 0):
        raise ConfigError(f"rl.log_ratio_clip={log_ratio_clip} must be a finite number above 0 (default 20)")
    m = jnp.asarray(mask) > 0
    f32 = lambda x: jnp.where(m, jnp.asarray(x, jnp.float32), 0.0)  # noqa: E731
    adv, v, old_v, ret = f32(advantages), f32(values), f32(old_values), f32(returns)
    log_ratio = f32(jnp.asarray(logps, jnp.float32) - jnp.asarray(old_logps, jnp.float32))
    ratio = jnp.exp(jnp.clip(log_ratio, -log_ratio_clip, log_ratio_clip))

    v_clipped = jnp.clip(v, old_v - cliprange_value, old_v + cliprange_value)
    vf_losses1, vf_losses2 = (v - ret) ** 2, (v_clipped - ret) ** 2
    vf_loss = 0.5 * masked_mean(jnp.maximum(vf_losses1, vf_losses2), m)
    pg_losses1 = -adv * ratio
    pg_losses2 = -adv * jnp.clip(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss = masked_mean(jnp.maximum(pg_losses1, pg_losses2), m)
    loss = pg_loss + vf_coef * vf_loss
    metrics = {
        "policy/approxkl_avg": 0.5 * jnp.mean(log_ratio**2),
        "policy/clipfrac_avg": masked_mean((pg_losses2 > pg_losses1).astype(jnp.float32), m),
        "loss/policy_avg": pg_loss,
        "loss/value_avg": vf_loss,
        "val/clipfrac_avg": masked_mean((vf_losses2 > vf_losses1).astype(jnp.float32), m),
        "val/ratio": jnp.mean(ratio),
    }
    return loss, jax.lax.stop_gradient(metrics)
