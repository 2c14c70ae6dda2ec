"""Advantages for online RL as pure jnp functions: GRPO / RLOO group baselines over rewards, and
PPO's GAE and masked whitening over per-token rewards and values.

Rows of one prompt are contiguous: rows g*G .. g*G+G-1 are prompt g's G completions. A NaN
reward marks an unscorable completion (every reward function returned None): it is left out of
every mean and std and gets advantage 0, as TRL 1.16 does.

- `group_advantages(estimator="grpo")` is TRL 1.16 `GRPOTrainer._generate_and_score_completions`
  (multi_objective_aggregation="sum_then_normalize"): A = r - nanmean_g(r), divided by
  (nanstd + eps) with `scale`: "group" the std of the prompt's group, "batch" the std over the
  whole batch (the mean stays per group), "none" no division (Dr. GRPO). TRL's nanstd is the
  unbiased one (ddof=1) and its eps is 1e-4; a std over fewer than 2 scorable rewards is NaN in
  TRL, so those rows get advantage 0 here too.
- `group_advantages(estimator="rloo")` is TRL 1.16 `RLOOTrainer`: A = r - the mean of the other
  scorable rewards of its group ((sum_g - r) / (n_g - 1); a group with one scorable completion
  gives 0). `scale="none"` is TRL RLOO's default (normalize_advantages=False); "batch" is
  RLOOConfig.normalize_advantages=True: the advantages whitened over the batch,
  (A - nanmean(A)) / (nanstd(A) + eps); "group" divides by the group's reward std + eps as GRPO
  does (no TRL counterpart; it is G/(G-1) times the GRPO advantage). TRL RLOO's own beta (a
  sequence-level KL subtracted from the reward) belongs to the caller, not here.
- `gae` / `masked_whiten` transcribe TRL 0.x `PPOTrainer` (trl <= 0.19; TRL 1.16 has no
  PPOTrainer): the reverse loop delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t +
  gamma lam A_{t+1}, returns = A + V, and `trl.trainer.utils.masked_whiten`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from llm.errors import ConfigError, UserError

ESTIMATORS = ("grpo", "rloo")
SCALES = ("group", "batch", "none")


def masked_mean(x: jax.Array, mask: jax.Array, axis: int | None = None) -> jax.Array:
    """sum(x * mask) / sum(mask) (TRL's masked_mean); masked-out entries may hold anything
    (they are selected away, not multiplied). A sum over no entries divides by 1."""
    m = jnp.asarray(mask, bool)
    return jnp.sum(jnp.where(m, x, 0.0), axis=axis) / jnp.maximum(jnp.sum(m, axis=axis), 1)


def masked_var(x: jax.Array, mask: jax.Array, unbiased: bool = True) -> jax.Array:
    """TRL's masked_var: the masked mean of the squared deviation, times n / (n - 1) when
    unbiased. TRL raises for n <= 1; under jit this uses n / max(n - 1, 1) instead."""
    m = jnp.asarray(mask, bool)
    var = masked_mean((x - masked_mean(x, m)) ** 2, m)
    if unbiased:
        n = jnp.sum(m).astype(jnp.float32)
        var = var * n / jnp.maximum(n - 1.0, 1.0)
    return var


def masked_whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True) -> jax.Array:
    """TRL's masked_whiten: (x - mean) * rsqrt(var + 1e-8), mean and unbiased var over the
    masked entries; with shift_mean=False the mean is added back (PPO's whiten_rewards).
    Every entry is transformed, masked or not, as in TRL; TRL's PPOTrainer zeroes the padding
    after (jnp.where(mask, out, 0))."""
    x = jnp.asarray(x, jnp.float32)
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * jax.lax.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


def _nan_std(x: jax.Array, valid: jax.Array, axis: int | None = None) -> tuple[jax.Array, jax.Array]:
    """(std with ddof=1 over the valid entries, count): TRL's nanstd, whose value is NaN for
    count < 2; the caller zeroes those rows."""
    n = jnp.sum(valid, axis=axis, keepdims=True)
    mean = jnp.sum(jnp.where(valid, x, 0.0), axis=axis, keepdims=True) / jnp.maximum(n, 1)
    ss = jnp.sum(jnp.where(valid, (x - mean) ** 2, 0.0), axis=axis, keepdims=True)
    return jnp.sqrt(ss / jnp.maximum(n - 1, 1)), n


def group_advantages(
    rewards: jax.Array,
    num_generations: int,
    *,
    estimator: str = "grpo",
    scale: str = "group",
    eps: float = 1e-4,
) -> jax.Array:
    """(B,) f32 advantages of (B,) rewards (NaN = unscorable), B = prompts * num_generations.

    See the module docstring for which TRL formula each (estimator, scale) is. Rows whose
    advantage TRL leaves NaN (unscorable rows; rows whose std or leave-one-out mean has too
    few scorable rewards) get 0.
    """
    if estimator not in ESTIMATORS:
        raise ConfigError(f"rl.advantage={estimator!r} is not an advantage estimator; use one of {', '.join(ESTIMATORS)}")
    if scale not in SCALES:
        raise ConfigError(f"rl.scale_rewards={scale!r} is not a reward scaling; use one of {', '.join(SCALES)}")
    if not (isinstance(num_generations, int) and num_generations >= 2):
        raise ConfigError(
            f"rl.num_generations={num_generations} leaves a prompt no other completion to compare with; use 2 or more"
        )
    if not (math.isfinite(eps) and eps > 0):
        raise ConfigError(f"rl.std_eps={eps} must be a finite number above 0 (TRL adds 1e-4, Tunix 1e-6)")
    shape = tuple(jnp.shape(rewards))
    if len(shape) != 1 or shape[0] % num_generations:
        raise UserError(
            f"rewards must be a (prompts * num_generations,) array with num_generations={num_generations}; got shape {shape}"
        )
    g = num_generations
    r = jnp.asarray(rewards, jnp.float32).reshape(-1, g)
    valid = ~jnp.isnan(r)
    r = jnp.where(valid, r, 0.0)
    n = jnp.sum(valid, axis=1, keepdims=True)
    total = jnp.sum(r, axis=1, keepdims=True)
    if estimator == "grpo":
        adv = r - total / jnp.maximum(n, 1)
        ok = valid
    else:  # rloo: leave-one-out mean of the other scorable rewards
        ok = valid & (n >= 2)
        adv = r - (total - r) / jnp.maximum(n - 1, 1)
    if scale == "group":
        std, count = _nan_std(r, valid, axis=1)
        ok = ok & (count >= 2)
        adv = adv / (std + eps)
    elif scale == "batch":
        if estimator == "grpo":  # per-group mean, batch std of the rewards
            std, count = _nan_std(r, valid)
        else:  # RLOO normalize_advantages: whiten the advantages over the batch
            std, count = _nan_std(adv, ok)
            adv = adv - jnp.sum(jnp.where(ok, adv, 0.0)) / jnp.maximum(jnp.sum(ok), 1)
        ok = ok & (count >= 2)
        adv = adv / (std + eps)
    return jnp.where(ok, adv, 0.0).reshape(-1)


def gae(
    rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float, lam: float
) -> tuple[jax.Array, jax.Array]:
    """(advantages, returns), each (B, T), by generalised advantage estimation as TRL 0.x
    PPOTrainer's reverse loop, run as a reverse `lax.scan` over time.

    `mask` marks completion tokens (each row a prefix: completion, then padding). Rewards and
    values outside it are taken as 0 (TRL fills padded values with 0 and has no reward there),
    so V after a row's last token is 0, and advantages and returns outside the mask are 0.
    Not whitened: TRL then applies masked_whiten to the advantages and zeroes the padding.
    """
    for name, v in (("rl.gamma", gamma), ("rl.lam", lam)):
        if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
            raise ConfigError(f"{name}={v} must be a number in [0, 1] (TRL PPO: gamma 1.0, lam 0.95)")
    shapes = {k: tuple(jnp.shape(a)) for k, a in (("rewards", rewards), ("values", values), ("mask", mask))}
    if len(shapes["mask"]) != 2 or len(set(shapes.values())) != 1:
        raise UserError(f"gae inputs must all be (batch, tokens) arrays of one shape; got {shapes}")
    m = jnp.asarray(mask, bool)
    r = jnp.where(m, jnp.asarray(rewards, jnp.float32), 0.0)
    v = jnp.where(m, jnp.asarray(values, jnp.float32), 0.0)
    next_v = jnp.concatenate([v[:, 1:], jnp.zeros_like(v[:, :1])], axis=1)
    deltas = r + gamma * next_v - v

    def step(carry: jax.Array, delta: jax.Array) -> tuple[jax.Array, jax.Array]:
        carry = delta + gamma * lam * carry
        return carry, carry

    _, adv = jax.lax.scan(step, jnp.zeros(deltas.shape[0], jnp.float32), deltas.T, reverse=True)
    adv = adv.T
    return jnp.where(m, adv, 0.0), jnp.where(m, adv + v, 0.0)
