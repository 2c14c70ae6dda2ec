"""The GRPO family of clipped policy-gradient losses (GRPO, BNPO, Dr. GRPO, DAPO, GSPO) as pure
jnp functions of per-token log-probs, reduced exactly as TRL 1.16 `GRPOTrainer._compute_loss`:

    log_ratio = logps - old_logps                           (per completion token)
    w = log_ratio (token) | masked mean of log_ratio over the row (sequence: GSPO), (B, 1)
    coef_1 = exp(w); coef_2 = clip(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    kl = estimator(ref_logps - logps) * coef_1                (beta > 0; `use_bias_correction_kl`)
    coef_1 = min(coef_1, delta)                               (delta > 0: INTELLECT-2 dual clip)
    per_token_loss = -min(coef_1 * A, coef_2 * A) + beta * kl
    loss_agg grpo:    mean over rows of (sum_t loss * mask) / max(tokens of the row, 1)
             bnpo:    sum(loss * mask) / max(sum(mask), 1)
             dr_grpo: sum(loss * mask) / (B * max_completion_length)
             dapo:    sum(loss * mask) / max(num_items, 1)

The returned scalar is TRL's `policy_loss` for the batch (for grpo, bnpo and dr_grpo TRL then
divides the backward loss by gradient_accumulation_steps; that is the caller's). For dapo TRL's
normaliser is num_items_in_batch / num_processes * gradient_accumulation_steps /
steps_per_generation, the completion tokens of one optimizer step's batch: pass that as
`num_items` (None = this batch's mask.sum(), right when one call is one optimizer step). Rows
whose mask is empty still count in grpo's and dr_grpo's row count, as in TRL.

Where this differs from TRL 1.16 (the issue asks for it; TRL's values are the defaults):
- `kl_estimator` k1 | k2 | k3 on log r = ref_logps - logps (Schulman's estimators: -log r,
  (log r)^2 / 2, r - 1 - log r); TRL computes only k3, the default.
- `log_ratio_clip`: every log-ratio is clamped to +-log_ratio_clip just before its exp (w above,
  and ref_logps - logps inside k3) as a numerical guard; TRL has none (the default 20 leaves any
  realistic ratio alone; beyond it the gradient through that ratio is 0).
- `delta` 0 means off (TRL: None).
Not supported: TRL's other loss types cispo, sapo, vespo and luspo; the entropy bonus,
top_entropy_quantile masking, the off-policy sequence mask and vLLM importance-sampling
correction. TRL's RLOOTrainer loss (the ratio of summed sequence log-probs, a mean over rows)
is not one of these: RLOO runs here as `rl.advantage=rloo` on this same loss.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from llm.errors import ConfigError, UserError

KL_ESTIMATORS = ("k1", "k2", "k3")
LOSS_AGGS = ("grpo", "bnpo", "dr_grpo", "dapo")
IMPORTANCE_SAMPLING = ("token", "sequence")
TRL_UNSUPPORTED = ("cispo", "sapo", "vespo", "luspo")


def _check_estimator(estimator: str) -> None:
    if estimator not in KL_ESTIMATORS:
        raise ConfigError(f"rl.kl_estimator={estimator!r} is not a KL estimator; use one of {', '.join(KL_ESTIMATORS)}")


def kl_of_log_ratio(log_r: jax.Array, estimator: str) -> jax.Array:
    """Schulman's per-token estimators of KL(pi || ref) from log r = log ref - log pi, the
    token sampled from pi: k1 = -log r, k2 = (log r)^2 / 2, k3 = r - 1 - log r (TRL's GRPO KL,
    and TRL 0.x PPOTrainer's kl_estimator="k3"; its "k1" is k1)."""
    _check_estimator(estimator)
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r**2
    return jnp.exp(log_r) - 1.0 - log_r


def token_kl(logps: jax.Array, ref_logps: jax.Array, estimator: str) -> jax.Array:
    """(B, T) per-token KL(policy || reference) estimate (k1 | k2 | k3) from the tokens'
    log-probs under each; shared by GRPO's penalty and PPO's per-token reward."""
    return kl_of_log_ratio(jnp.asarray(ref_logps, jnp.float32) - jnp.asarray(logps, jnp.float32), estimator)


@dataclasses.dataclass(frozen=True)
class PolicyLoss:
    """The clipped policy loss's constants (names as config.rl; TRL GRPOConfig's in brackets),
    checked when built so a bad value stops a run before anything compiles.

    epsilon_low [epsilon] / epsilon_high: the clip range 1 - low .. 1 + high (TRL 0.2 / = low;
    DAPO 0.28 high). delta: the dual clip, caps coef_1 (0 = off, TRL None). importance_sampling
    [importance_sampling_level]: token | sequence (GSPO). beta: KL penalty weight (TRL 0.0).
    kl_estimator: k1 | k2 | k3 (TRL k3). loss_agg [loss_type]: grpo | bnpo | dr_grpo | dapo (TRL
    dapo). max_completion_length: dr_grpo's constant (rl.max_new_tokens). log_ratio_clip: the
    guard before exp. use_bias_correction_kl: the KL term times coef_1 (TRL 1.16 default True).
    """

    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    delta: float = 0.0
    importance_sampling: str = "token"
    beta: float = 0.0
    kl_estimator: str = "k3"
    loss_agg: str = "dapo"
    max_completion_length: int = 0
    log_ratio_clip: float = 20.0
    use_bias_correction_kl: bool = True

    def __post_init__(self) -> None:
        if self.loss_agg in TRL_UNSUPPORTED:
            raise ConfigError(
                f"rl.loss_agg={self.loss_agg!r} is a TRL loss type not supported here; use one of {', '.join(LOSS_AGGS)}"
            )
        if self.loss_agg not in LOSS_AGGS:
            raise ConfigError(f"rl.loss_agg={self.loss_agg!r} is not a loss aggregation; use one of {', '.join(LOSS_AGGS)}")
        if self.importance_sampling not in IMPORTANCE_SAMPLING:
            raise ConfigError(
                f"rl.importance_sampling={self.importance_sampling!r} is not a level; use token or sequence (GSPO)"
            )
        _check_estimator(self.kl_estimator)
        if not (_finite(self.epsilon_low) and 0.0 <= self.epsilon_low < 1.0):
            raise ConfigError(f"rl.epsilon_low={self.epsilon_low} must lie in [0, 1) (TRL's epsilon is 0.2)")
        if not (_finite(self.epsilon_high) and self.epsilon_high >= 0.0):
            raise ConfigError(f"rl.epsilon_high={self.epsilon_high} must be a finite number >= 0 (TRL 0.2, DAPO 0.28)")
        if not (_finite(self.delta) and (self.delta == 0.0 or self.delta > 1.0)):
            raise ConfigError(
                f"rl.delta={self.delta} must be 0 (no dual clip) or above 1 (TRL recommends > 1 + epsilon_high)"
            )
        if not (_finite(self.beta) and self.beta >= 0.0):
            raise ConfigError(f"rl.beta={self.beta} must be a finite number >= 0 (TRL 0.0, Tunix 0.04)")
        if not (isinstance(self.max_completion_length, int) and self.max_completion_length >= 0):
            raise ConfigError(f"rl.max_new_tokens={self.max_completion_length} must be an integer >= 0")
        if self.loss_agg == "dr_grpo" and self.max_completion_length < 1:
            raise ConfigError(
                "rl.loss_agg=dr_grpo divides by the batch size times max_completion_length; "
                f"set rl.max_new_tokens >= 1 (got {self.max_completion_length})"
            )
        if not (_finite(self.log_ratio_clip) and self.log_ratio_clip > 0.0):
            raise ConfigError(f"rl.log_ratio_clip={self.log_ratio_clip} must be a finite number above 0 (default 20)")
        if not isinstance(self.use_bias_correction_kl, bool):
            raise ConfigError(f"rl.use_bias_correction_kl={self.use_bias_correction_kl!r} must be True or False")

    @classmethod
    def from_config(cls, rl: Any) -> PolicyLoss:
        """From config.rl (its fields named as here; max_completion_length is rl.max_new_tokens)."""
        return cls(
            epsilon_low=float(rl.epsilon_low),
            epsilon_high=float(rl.epsilon_high),
            delta=float(rl.delta),
            importance_sampling=rl.importance_sampling,
            beta=float(rl.beta),
            kl_estimator=rl.kl_estimator,
            loss_agg=rl.loss_agg,
            max_completion_length=int(rl.max_new_tokens),
            log_ratio_clip=float(rl.log_ratio_clip),
            use_bias_correction_kl=bool(rl.get("use_bias_correction_kl", True)),
        )


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_inputs(spec: PolicyLoss, arrays: dict[str, Any]) -> None:
    shapes = {k: tuple(jnp.shape(a)) for k, a in arrays.items() if a is not None}
    bt = shapes["logps"]
    token_shaped = [k for k in ("logps", "old_logps", "mask", "ref_logps") if k in shapes]
    if len(bt) != 2 or any(shapes[k] != bt for k in token_shaped) or shapes["advantages"] != bt[:1]:
        raise UserError(
            f"policy_loss takes (B, T) logps, old_logps, mask, ref_logps and (B,) advantages; got shapes {shapes}"
        )
    if spec.beta > 0 and arrays["ref_logps"] is None:
        raise UserError(f"rl.beta={spec.beta} needs reference log-probs: pass ref_logps, or set rl.beta=0")
    if "num_items" in shapes and shapes["num_items"] != ():
        raise UserError(f"num_items must be a scalar (completion tokens of the step); got shape {shapes['num_items']}")


def policy_loss(
    spec: PolicyLoss,
    logps: jax.Array,
    old_logps: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    ref_logps: jax.Array | None = None,
    num_items: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, metrics) of the clipped policy objective over a batch of completions (module
    docstring: which TRL formula each piece is).

    logps: the policy's per-token log-probs (differentiated); old_logps: the rollout policy's
    (detached; equal to logps' value on the first of num_iterations passes); advantages: one
    per row; mask: 1 on completion tokens; ref_logps: the reference policy's (beta > 0 only).
    Entries outside the mask may hold anything finite or not: they are selected away.
    Metrics (TRL's names, detached): "kl" (beta > 0; the masked mean of the KL term as it
    enters the loss), "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean".
    """
    _check_inputs(spec, dict(logps=logps, old_logps=old_logps, advantages=advantages, mask=mask,
                             ref_logps=ref_logps, num_items=num_items))
    m = jnp.asarray(mask) > 0
    logps = jnp.asarray(logps, jnp.float32)
    clip = spec.log_ratio_clip
    log_ratio = jnp.where(m, logps - jnp.asarray(old_logps, jnp.float32), 0.0)
    tokens = jnp.sum(m, axis=-1, keepdims=True)
    if spec.importance_sampling == "token":
        log_w = log_ratio
    else:  # GSPO: one weight per sequence, the mean token log-ratio, (B, 1)
        log_w = jnp.sum(log_ratio, axis=-1, keepdims=True) / jnp.maximum(tokens, 1)
    coef_1 = jnp.exp(jnp.clip(log_w, -clip, clip))
    adv = jnp.asarray(advantages, jnp.float32)[:, None]

    if spec.beta > 0:
        log_r = jnp.where(m, jnp.asarray(ref_logps, jnp.float32) - logps, 0.0)
        if spec.kl_estimator == "k3":
            log_r = jnp.clip(log_r, -clip, clip)
        kl = kl_of_log_ratio(log_r, spec.kl_estimator)
        if spec.use_bias_correction_kl:
            kl = kl * coef_1

    coef_2 = jnp.clip(coef_1, 1.0 - spec.epsilon_low, 1.0 + spec.epsilon_high)
    if spec.delta > 0:
        coef_1 = jnp.minimum(coef_1, spec.delta)
    per_token = -jnp.minimum(coef_1 * adv, coef_2 * adv)
    if spec.beta > 0:
        per_token = per_token + spec.beta * kl
    per_token = jnp.broadcast_to(per_token, m.shape)
    row_sums = jnp.sum(jnp.where(m, per_token, 0.0), axis=-1)
    if spec.loss_agg == "grpo":
        loss = jnp.mean(row_sums / jnp.maximum(tokens[:, 0], 1))
    elif spec.loss_agg == "bnpo":
        loss = jnp.sum(row_sums) / jnp.maximum(jnp.sum(m), 1)
    elif spec.loss_agg == "dr_grpo":
        loss = jnp.sum(row_sums) / (m.shape[0] * spec.max_completion_length)
    else:  # dapo
        normaliser = jnp.sum(m) if num_items is None else num_items
        loss = jnp.sum(row_sums) / jnp.maximum(jnp.asarray(normaliser, jnp.float32), 1.0)

    def global_mean(x: jax.Array) -> jax.Array:
        if x.shape[-1] == 1 and m.shape[-1] != 1:  # sequence level: one value per row, all rows count
            return jnp.mean(x)
        return jnp.sum(jnp.where(m, x, 0.0)) / jnp.maximum(jnp.sum(m), 1)

    low = ((coef_1 < 1.0 - spec.epsilon_low) & (adv < 0)).astype(jnp.float32)
    high = ((coef_1 > 1.0 + spec.epsilon_high) & (adv > 0)).astype(jnp.float32)
    metrics = {
        "clip_ratio/low_mean": global_mean(low),
        "clip_ratio/high_mean": global_mean(high),
        "clip_ratio/region_mean": global_mean(jnp.maximum(low, high)),
    }
    if spec.beta > 0:
        metrics["kl"] = global_mean(kl)
    return loss, jax.lax.stop_gradient(metrics)
