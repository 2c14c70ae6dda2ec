"""The DPO family of preference losses as pure functions of per-pair log-probs.

Inputs are (pairs,) arrays: each answer's log-prob *sum* over its answer tokens and its answer
token count, for the policy and (where the method has one) the reference policy. Each loss
reduces them exactly as TRL 1.16 does, so a run here and a TRL run on the same numbers log
the same loss and the same metrics:

- `sigmoid` (DPO, `trl.DPOTrainer`): -logsigmoid(beta * d), d the difference of the chosen and
  rejected log-ratios (summed log-probs). With `label_smoothing` e > 0 it is the conservative
  cDPO form -(1-e) logsigmoid(beta d) - e logsigmoid(-beta d) (TRL's CPO sigmoid loss and
  TRL < 1.0's DPO sigmoid loss; TRL 1.16's DPOTrainer ignores `label_smoothing` for sigmoid).
- `robust` (DPOTrainer): (-(1-e) logsigmoid(beta d) + e logsigmoid(-beta d)) / (1 - 2e).
- `hinge` (DPOTrainer): relu(1 - beta d).
- `ipo` (DPOTrainer): (d' - 1/(2 beta))^2, d' the log-ratios each divided by its answer's token
  count (at least 1) before the difference.
- `simpo` (`trl.experimental.cpo.CPOTrainer`, loss_type="simpo"): average log-probs, no
  reference: -(1-e) logsigmoid(beta m) - e logsigmoid(-beta m), m = avg_c - avg_r - gamma/beta.
- `orpo` (`trl.experimental.orpo.ORPOTrainer`): NLL of the chosen sequence (prompt and answer,
  mean over its tokens) - lambda * mean(logsigmoid(log_odds)), log_odds = (avg_c - avg_r) -
  (log(1 - exp(avg_c)) - log(1 - exp(avg_r))) on average answer log-probs. TRL's ORPO has one
  `beta` that is both lambda and the reward scale; here they are `orpo_lambda` and `beta`.

Every loss is a mean over the pairs. `sft_weight` > 0 adds the RPO / CPO term: weight times
the chosen answers' NLL, a mean over all their tokens in the batch (TRL 1.16's `loss_type=
["sigmoid", "sft"]` with `loss_weights=[1, w]`, formerly `rpo_alpha`; `cpo_alpha` for simpo).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from llm.errors import ConfigError, UserError

LOSSES = ("sigmoid", "robust", "hinge", "ipo", "simpo", "orpo")
REFERENCE_FREE = ("simpo", "orpo")
SMOOTHED = ("sigmoid", "robust", "simpo")  # the losses that read label_smoothing
SIMPO_GAMMA = 0.5  # TRL CPOConfig.simpo_gamma default
ORPO_LAMBDA = 0.1  # TRL ORPOConfig.beta default (the paper's lambda)


@dataclasses.dataclass(frozen=True)
class DPOLoss:
    """Which preference loss and its constants; checked when built, so a bad value stops a run
    before anything compiles. `simpo_gamma` / `orpo_lambda` are for simpo / orpo only (None
    takes TRL's default there)."""

    loss: str = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float | None = None
    orpo_lambda: float | None = None
    sft_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"dpo.loss={self.loss!r} is not a preference loss; use one of {', '.join(LOSSES)}")
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ConfigError(f"dpo.beta={self.beta} must be a finite number above 0 (TRL's default is 0.1)")
        e = self.label_smoothing
        if self.loss in SMOOTHED and not 0.0 <= e < 0.5:
            raise ConfigError(f"dpo.label_smoothing={e} must lie in [0, 0.5) (the probability a label is flipped)")
        if self.loss not in SMOOTHED and e != 0.0:
            raise ConfigError(
                f"dpo.label_smoothing={e} has no effect on dpo.loss={self.loss}; set it to 0 or use sigmoid, robust or simpo"
            )
        self._only_for("simpo_gamma", "simpo")
        self._only_for("orpo_lambda", "orpo")
        if self.simpo_gamma is not None and not math.isfinite(self.simpo_gamma):
            raise ConfigError(f"dpo.simpo_gamma={self.simpo_gamma} must be a finite number (TRL's default is 0.5)")
        if self.orpo_lambda is not None and not (math.isfinite(self.orpo_lambda) and self.orpo_lambda >= 0):
            raise ConfigError(f"dpo.orpo_lambda={self.orpo_lambda} must be a finite number >= 0 (TRL's default is 0.1)")
        if not (math.isfinite(self.sft_weight) and self.sft_weight >= 0):
            raise ConfigError(f"dpo.sft_weight={self.sft_weight} must be a finite number >= 0")
        if self.loss == "orpo" and self.sft_weight:
            raise ConfigError(
                f"dpo.sft_weight={self.sft_weight} does not apply to orpo, whose NLL term always has weight 1; set it to 0"
            )

    def _only_for(self, name: str, loss: str) -> None:
        if getattr(self, name) is not None and self.loss != loss:
            raise ConfigError(f"dpo.{name}={getattr(self, name)} is read only by dpo.loss={loss}, not {self.loss}; unset it")

    @property
    def needs_reference(self) -> bool:
        """Whether the loss reads reference-policy log-probs (all but simpo and orpo)."""
        return self.loss not in REFERENCE_FREE

    @property
    def gamma(self) -> float:
        return SIMPO_GAMMA if self.simpo_gamma is None else self.simpo_gamma

    @property
    def lam(self) -> float:
        return ORPO_LAMBDA if self.orpo_lambda is None else self.orpo_lambda


def log1mexp(x: jax.Array) -> jax.Array:
    """log(1 - exp(x)) for x < 0 without cancellation (branch at -log 2, as TRL's ORPO does)."""
    return jnp.where(x < -math.log(2), jnp.log1p(-jnp.exp(x)), jnp.log(-jnp.expm1(x)))


def _smoothed_sigmoid(x: jax.Array, e: float) -> jax.Array:
    """-(1-e) logsigmoid(x) - e logsigmoid(-x): DPO's loss, conservative (cDPO) when e > 0."""
    return -(1.0 - e) * jax.nn.log_sigmoid(x) - e * jax.nn.log_sigmoid(-x)


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def _check_inputs(spec: DPOLoss, arrays: dict[str, jax.Array | None], has_ref: bool, has_nll: bool) -> None:
    shapes = {name: tuple(jnp.shape(a)) for name, a in arrays.items() if a is not None}
    first = shapes["chosen_logps"]
    if len(first) != 1 or any(s != first for s in shapes.values()):
        raise UserError(f"preference loss inputs must all be (pairs,) arrays of one length; got shapes {shapes}")
    if spec.needs_reference and not has_ref:
        raise ConfigError(
            f"dpo.loss={spec.loss} needs reference log-probs (ref_chosen_logps and ref_rejected_logps); "
            "pass both, or use simpo or orpo, which have no reference"
        )
    if not spec.needs_reference and has_ref:
        raise ConfigError(f"dpo.loss={spec.loss} has no reference policy; drop the reference log-probs (dpo.reference=none)")
    if spec.loss == "orpo" and not has_nll:
        raise UserError(
            "orpo needs chosen_nll_logps and chosen_nll_tokens: the chosen sequence's log-prob sum and token count "
            "over prompt and answer (TRL's ORPO NLL covers both)"
        )
    if has_nll and spec.loss != "orpo" and not spec.sft_weight:
        raise UserError("chosen_nll_logps are read only by orpo or with dpo.sft_weight > 0; drop them or set dpo.sft_weight")


def dpo_loss(
    spec: DPOLoss,
    chosen_logps: jax.Array,
    rejected_logps: jax.Array,
    chosen_tokens: jax.Array,
    rejected_tokens: jax.Array,
    ref_chosen_logps: jax.Array | None = None,
    ref_rejected_logps: jax.Array | None = None,
    *,
    chosen_nll_logps: jax.Array | None = None,
    chosen_nll_tokens: jax.Array | None = None,
    pair_mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, metrics) of `spec.loss` over a batch of preference pairs, TRL's reduction.

    `*_logps` are per-pair sums of answer-token log-probs and `*_tokens` their counts. The SFT
    term (sft_weight, or orpo's NLL) covers the chosen answers unless `chosen_nll_logps` /
    `chosen_nll_tokens` name other sums (orpo needs them: prompt and answer). `pair_mask`
    (bool, (pairs,)) drops empty slots of a fixed-shape batch from every mean and gradient.
    Metrics use TRL's names; rewards are beta * log-ratio (beta * average log-prob for simpo
    and orpo), detached.
    """
    ref = (ref_chosen_logps, ref_rejected_logps)
    if (ref[0] is None) != (ref[1] is None):
        raise UserError("pass both ref_chosen_logps and ref_rejected_logps, or neither")
    nll = (chosen_nll_logps, chosen_nll_tokens)
    if (nll[0] is None) != (nll[1] is None):
        raise UserError("pass both chosen_nll_logps and chosen_nll_tokens, or neither")
    arrays = dict(
        chosen_logps=chosen_logps, rejected_logps=rejected_logps, chosen_tokens=chosen_tokens,
        rejected_tokens=rejected_tokens, ref_chosen_logps=ref[0], ref_rejected_logps=ref[1],
        chosen_nll_logps=nll[0], chosen_nll_tokens=nll[1], pair_mask=pair_mask,
    )
    _check_inputs(spec, arrays, ref[0] is not None, nll[0] is not None)
    mask = jnp.ones(jnp.shape(chosen_logps), bool) if pair_mask is None else jnp.asarray(pair_mask, bool)
    # Empty slots get harmless stand-ins (-1 log-prob over 1 token), so no log(0) reaches a gradient.
    safe = {k: jnp.where(mask, jnp.asarray(v, jnp.float32), -1.0 if "logps" in k else 1.0)
            for k, v in arrays.items() if v is not None and k != "pair_mask"}
    c, r = safe["chosen_logps"], safe["rejected_logps"]
    n_c, n_r = jnp.maximum(safe["chosen_tokens"], 1.0), jnp.maximum(safe["rejected_tokens"], 1.0)
    beta, e = spec.beta, spec.label_smoothing
    metrics: dict[str, jax.Array] = {}

    if spec.needs_reference:
        c_ratio, r_ratio = c - safe["ref_chosen_logps"], r - safe["ref_rejected_logps"]
        delta = c_ratio - r_ratio
        if spec.loss == "sigmoid":
            losses = _smoothed_sigmoid(beta * delta, e)
        elif spec.loss == "robust":
            losses = (-(1.0 - e) * jax.nn.log_sigmoid(beta * delta) + e * jax.nn.log_sigmoid(-beta * delta)) / (1.0 - 2.0 * e)
        elif spec.loss == "hinge":
            losses = jax.nn.relu(1.0 - beta * delta)
        else:  # ipo: log-ratios per answer token
            losses = (c_ratio / n_c - r_ratio / n_r - 1.0 / (2.0 * beta)) ** 2
        logps_c, logps_r, chosen_rewards, rejected_rewards = c, r, beta * c_ratio, beta * r_ratio
    else:
        logps_c, logps_r = c / n_c, r / n_r  # average answer log-probs
        if spec.loss == "simpo":
            losses = _smoothed_sigmoid(beta * (logps_c - logps_r - spec.gamma / beta), e)
        else:  # orpo
            log_odds = (logps_c - logps_r) - (log1mexp(logps_c) - log1mexp(logps_r))
            ratio = jax.nn.log_sigmoid(log_odds)
            losses = -spec.lam * ratio
            metrics["log_odds_ratio"] = _masked_mean(ratio, mask)
            metrics["log_odds_chosen"] = _masked_mean(log_odds, mask)
        chosen_rewards, rejected_rewards = beta * logps_c, beta * logps_r

    loss = _masked_mean(losses, mask)
    sft_weight = 1.0 if spec.loss == "orpo" else spec.sft_weight
    if sft_weight:
        nll_sum = safe.get("chosen_nll_logps", c)
        nll_tokens = safe.get("chosen_nll_tokens", safe["chosen_tokens"])
        nll_loss = -jnp.sum(jnp.where(mask, nll_sum, 0.0)) / jnp.maximum(jnp.sum(jnp.where(mask, nll_tokens, 0.0)), 1.0)
        loss = loss + sft_weight * nll_loss
        metrics["nll_loss"] = nll_loss

    chosen_rewards, rejected_rewards = jax.lax.stop_gradient((chosen_rewards, rejected_rewards))
    metrics.update({
        "rewards/chosen": _masked_mean(chosen_rewards, mask),
        "rewards/rejected": _masked_mean(rejected_rewards, mask),
        "rewards/accuracies": _masked_mean((chosen_rewards > rejected_rewards).astype(jnp.float32), mask),
        "rewards/margins": _masked_mean(chosen_rewards - rejected_rewards, mask),
        "logps/chosen": _masked_mean(logps_c, mask),
        "logps/rejected": _masked_mean(logps_r, mask),
    })
    return loss, jax.lax.stop_gradient(metrics)
