"""GRPO / BNPO / Dr. GRPO / DAPO / GSPO policy losses against a numpy (float64) transcription of
TRL 1.16 GRPOTrainer._compute_loss on fixed tensors, every aggregation and KL estimator."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.config.base import base_config
from llm.errors import ConfigError, UserError
from llm.rl.grpo_losses import PolicyLoss, policy_loss, token_kl

TOL = dict(rtol=1e-6, atol=1e-6)
B, T, MAX_LEN = 8, 6, 9


def _batch(seed=2):
    """Per-token log-probs with log-ratios wide enough to clip on both sides, mixed-sign
    advantages, right-padded masks of lengths 6..0 (one empty row); f32 as the loss sees them."""
    rng = np.random.default_rng(seed)
    logps = -rng.uniform(0.05, 3.0, (B, T))
    old = logps + rng.normal(0.0, 0.35, (B, T)) + rng.normal(0.0, 0.4, (B, 1))
    ref = logps + rng.normal(0.0, 0.5, (B, T))
    adv = rng.normal(0.0, 1.0, B)
    lengths = np.array([6, 5, 3, 1, 6, 0, 4, 2])
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    return dict(logps=f32(logps), old_logps=f32(old), advantages=f32(adv), mask=mask, ref_logps=f32(ref))


# ---- numpy transcription of TRL 1.16 GRPOTrainer._compute_loss (float64) ----

def np_trl_loss(b, *, loss_type, level="token", eps_low=0.2, eps_high=0.2, delta=None, beta=0.0, kl="k3",
                max_completion_length=MAX_LEN, num_items=None, bias_correction=True, clip=None):
    d = {k: np.asarray(v, np.float64) for k, v in b.items()}
    per_token_logps, mask = d["logps"], d["mask"]
    advantages = d["advantages"][:, None]
    log_ratio = per_token_logps - d["old_logps"]
    if level == "token":
        log_importance_weights = log_ratio
    else:
        log_importance_weights = ((log_ratio * mask).sum(-1) / np.maximum(mask.sum(-1), 1.0))[:, None]
    if clip is not None:  # our guard, not TRL's
        log_importance_weights = np.clip(log_importance_weights, -clip, clip)
    coef_1 = np.exp(log_importance_weights)
    if beta != 0.0:
        x = d["ref_logps"] - per_token_logps
        # TRL: k3 only; k1 and k2 are Schulman's other estimators on the same log r
        per_token_kl = {"k1": -x, "k2": 0.5 * x**2, "k3": np.exp(x) - x - 1}[kl]
        if bias_correction:
            per_token_kl = per_token_kl * coef_1
    coef_2 = np.clip(coef_1, 1 - eps_low, 1 + eps_high)
    if delta is not None:
        coef_1 = np.minimum(coef_1, delta)
    per_token_loss = -np.minimum(coef_1 * advantages, coef_2 * advantages)
    if beta != 0.0:
        per_token_loss = per_token_loss + beta * per_token_kl
    if loss_type == "grpo":
        loss = ((per_token_loss * mask).sum(-1) / np.maximum(mask.sum(-1), 1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token_loss * mask).sum() / max(mask.sum(), 1.0)
    elif loss_type == "dr_grpo":
        loss = (per_token_loss * mask).sum() / (per_token_loss.shape[0] * max_completion_length)
    else:  # dapo
        loss = (per_token_loss * mask).sum() / max(mask.sum() if num_items is None else num_items, 1.0)

    def global_masked_mean(x):
        if x.shape[1] == 1:
            return x.sum() / x.shape[0]
        return (x * mask).sum() / max(mask.sum(), 1.0)

    is_low = ((coef_1 < 1 - eps_low) & (advantages < 0)).astype(np.float64)
    is_high = ((coef_1 > 1 + eps_high) & (advantages > 0)).astype(np.float64)
    metrics = {
        "clip_ratio/low_mean": global_masked_mean(is_low),
        "clip_ratio/high_mean": global_masked_mean(is_high),
        "clip_ratio/region_mean": global_masked_mean(((is_low + is_high) > 0).astype(np.float64)),
    }
    if beta != 0.0:
        metrics["kl"] = global_masked_mean(per_token_kl)
    return loss, metrics


def _check(spec, b, want, **kw):
    loss, metrics = policy_loss(spec, **b, **kw)
    want_loss, want_metrics = want
    np.testing.assert_allclose(float(loss), want_loss, **TOL)
    assert set(metrics) == set(want_metrics)
    for k, v in want_metrics.items():
        np.testing.assert_allclose(float(metrics[k]), v, **TOL, err_msg=k)
    return float(loss)


@pytest.mark.parametrize("kl", [None, "k1", "k2", "k3"])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("agg", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_policy_loss_matches_trl(agg, level, kl):
    b = _batch()
    beta = 0.0 if kl is None else 0.04
    spec = PolicyLoss(epsilon_low=0.2, epsilon_high=0.28, importance_sampling=level, beta=beta,
                      kl_estimator=kl or "k3", loss_agg=agg, max_completion_length=MAX_LEN)
    if not beta:
        b = {k: v for k, v in b.items() if k != "ref_logps"}
    want = np_trl_loss(b, loss_type=agg, level=level, eps_low=0.2, eps_high=0.28, beta=beta, kl=kl)
    _check(spec, b, want)
    assert want[1]["clip_ratio/low_mean"] > 0 and want[1]["clip_ratio/high_mean"] > 0  # both sides clip


def test_policy_loss_default_spec_is_trl_default():
    """PolicyLoss() is TRL GRPOConfig's defaults: dapo, token level, epsilon 0.2 both sides, beta 0."""
    b = {k: v for k, v in _batch(1).items() if k != "ref_logps"}
    _check(PolicyLoss(), b, np_trl_loss(b, loss_type="dapo"))


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_dual_clip_delta(level):
    b = _batch(2)
    b["old_logps"] = b["old_logps"] - np.float32(0.6) * (b["advantages"] < 0)[:, None]  # large ratios where A < 0
    spec = PolicyLoss(delta=1.5, importance_sampling=level, loss_agg="bnpo")
    with_delta = _check(spec, b, np_trl_loss(b, loss_type="bnpo", level=level, delta=1.5))
    without = _check(PolicyLoss(importance_sampling=level, loss_agg="bnpo"), b, np_trl_loss(b, loss_type="bnpo", level=level))
    assert with_delta < without  # the cap bit


def test_dapo_num_items_and_bias_correction_off():
    b = _batch(3)
    spec = PolicyLoss(beta=0.1, kl_estimator="k3", use_bias_correction_kl=False)
    _check(spec, b, np_trl_loss(b, loss_type="dapo", beta=0.1, num_items=57.0, bias_correction=False),
           num_items=jnp.asarray(57.0))
    spec = PolicyLoss(beta=0.1)
    _check(spec, b, np_trl_loss(b, loss_type="dapo", beta=0.1, num_items=57.0), num_items=57)


def test_jit_grad_and_padding_is_ignored():
    b = _batch(4)
    spec = PolicyLoss(beta=0.04, loss_agg="grpo", importance_sampling="sequence")
    fn = jax.jit(functools.partial(policy_loss, spec))
    loss, metrics = fn(**b)
    want = np_trl_loss(b, loss_type="grpo", level="sequence", beta=0.04)
    np.testing.assert_allclose(float(loss), want[0], **TOL)
    # Anything outside the mask (here -inf / NaN) changes neither the loss nor its gradient.
    pad = b["mask"] == 0
    dirty = dict(b, logps=np.where(pad, -np.inf, b["logps"]).astype(np.float32),
                 old_logps=np.where(pad, np.nan, b["old_logps"]).astype(np.float32))
    grad = lambda bb: jax.grad(lambda lp: fn(**dict(bb, logps=lp))[0])(bb["logps"])  # noqa: E731
    g_clean, g_dirty = np.asarray(grad(b)), np.asarray(grad(dirty))
    assert np.isfinite(g_dirty).all() and not g_dirty[pad].any()
    np.testing.assert_allclose(g_dirty, g_clean, rtol=0, atol=0)
    np.testing.assert_allclose(float(fn(**dirty)[0]), float(loss), rtol=0, atol=0)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_log_ratio_clip_guards_exp(level):
    """A log-ratio past the guard (exp(100) overflows f32) is clamped before exp: the loss and
    gradient stay finite and equal TRL's formula on the clamped log-ratio."""
    b = _batch(5)
    b["old_logps"][0, :3] -= 100.0
    b["advantages"][0] = -1.0
    spec = PolicyLoss(importance_sampling=level, loss_agg="bnpo", log_ratio_clip=20.0)
    _check(spec, b | {"ref_logps": None}, np_trl_loss(b, loss_type="bnpo", level=level, clip=20.0))
    g = jax.grad(lambda lp: policy_loss(spec, lp, b["old_logps"], b["advantages"], b["mask"])[0])(b["logps"])
    assert np.isfinite(np.asarray(g)).all()


def test_token_kl_estimators():
    logps = np.array([[-1.0, -2.0]], np.float32)
    ref = np.array([[-1.5, -1.0]], np.float32)
    x = (ref - logps).astype(np.float64)
    for est, want in (("k1", -x), ("k2", x**2 / 2), ("k3", np.exp(x) - 1 - x)):
        np.testing.assert_allclose(np.asarray(token_kl(logps, ref, est)), want, **TOL)
    assert (np.asarray(token_kl(logps, ref, "k3")) >= 0).all()


def test_from_config_reads_rl():
    rl = base_config().rl
    spec = PolicyLoss.from_config(rl)
    assert spec == PolicyLoss(max_completion_length=rl.max_new_tokens)
    rl.loss_agg, rl.epsilon_high, rl.importance_sampling = "dr_grpo", 0.28, "sequence"
    spec = PolicyLoss.from_config(rl)
    assert (spec.loss_agg, spec.epsilon_high, spec.importance_sampling) == ("dr_grpo", 0.28, "sequence")


@pytest.mark.parametrize("kw,match", [
    (dict(loss_agg="cispo"), "TRL loss type not supported"),
    (dict(loss_agg="mean"), "rl.loss_agg='mean'"),
    (dict(kl_estimator="k4"), "rl.kl_estimator='k4'"),
    (dict(importance_sampling="seq"), "rl.importance_sampling='seq'"),
    (dict(epsilon_low=1.0), "rl.epsilon_low=1.0"),
    (dict(epsilon_high=-0.1), "rl.epsilon_high=-0.1"),
    (dict(delta=0.9), "rl.delta=0.9"),
    (dict(beta=float("nan")), "rl.beta=nan"),
    (dict(loss_agg="dr_grpo"), "rl.max_new_tokens >= 1"),
    (dict(log_ratio_clip=0.0), "rl.log_ratio_clip=0.0"),
])
def test_policy_loss_spec_checks(kw, match):
    with pytest.raises(ConfigError, match=match):
        PolicyLoss(**kw)


def test_policy_loss_bad_inputs():
    b = _batch()
    with pytest.raises(UserError, match="needs reference log-probs"):
        policy_loss(PolicyLoss(beta=0.1), b["logps"], b["old_logps"], b["advantages"], b["mask"])
    with pytest.raises(UserError, match="shapes"):
        policy_loss(PolicyLoss(), b["logps"], b["old_logps"], b["advantages"][:3], b["mask"])
