"""PPO per-token rewards and clipped policy + value loss against a numpy (float64) transcription
of TRL 0.x PPOTrainer's formulas (trl <= 0.19; TRL 1.16 has no PPOTrainer), on fixed tensors."""

import functools

import jax
import numpy as np
import pytest

from llm.errors import ConfigError, UserError
from llm.rl.advantages import gae, masked_whiten
from llm.rl.ppo_losses import ppo_loss, ppo_token_rewards

TOL = dict(rtol=1e-6, atol=1e-6)
B, T = 6, 7
INVALID_LOGPROB = 1.0  # TRL's fill for padded log-probs


def _rollout(seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.array([7, 5, 3, 1, 6, 4])
    mask = np.arange(T)[None, :] < lengths[:, None]
    logps = -rng.uniform(0.05, 3.0, (B, T))
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    return dict(
        mask=mask, scores=f32(rng.normal(0, 2, B)), logps=f32(logps),
        ref_logps=f32(logps + rng.normal(0, 0.5, (B, T))),
        new_logps=f32(logps + rng.normal(0, 0.3, (B, T))),
        values=f32(rng.normal(0, 1, (B, T))), new_values=f32(rng.normal(0, 1, (B, T))),
        advantages=f32(rng.normal(0, 1, (B, T))), returns=f32(rng.normal(0, 1.5, (B, T))),
    )


# ---- numpy transcriptions (float64) ----

def np_masked_mean(values, mask):
    return (values * mask).sum() / mask.sum()


def np_masked_whiten(values, mask, shift_mean=True):
    mean = np_masked_mean(values, mask)
    var = np_masked_mean((values - mean) ** 2, mask) * mask.sum() / (mask.sum() - 1)
    whitened = (values - mean) / np.sqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def np_token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, kl_estimator):
    """PPOTrainer step 4 (compute rewards), the score on the last completion token."""
    padding_mask = ~mask
    logprobs = np.where(padding_mask, INVALID_LOGPROB, logprobs)
    ref_logprobs = np.where(padding_mask, INVALID_LOGPROB, ref_logprobs)
    logr = ref_logprobs - logprobs
    kl = {"k1": -logr, "k2": 0.5 * logr**2, "k3": (np.exp(logr) - 1) - logr}[kl_estimator]
    rewards = -kl_coef * kl
    sequence_lengths = mask.sum(1) - 1
    rewards[np.arange(len(scores)), sequence_lengths] += scores
    return rewards


def np_ppo_loss(new_logprobs, logprobs, advantage, mask, vpred, values, returns, cliprange, cliprange_value, vf_coef):
    """PPOTrainer's minibatch loss and the stats it logs."""
    padding_mask = ~mask
    new_logprobs = np.where(padding_mask, INVALID_LOGPROB, new_logprobs)
    logprobs = np.where(padding_mask, INVALID_LOGPROB, logprobs)
    vpred = np.where(padding_mask, 0.0, vpred)
    vpredclipped = np.clip(vpred, values - cliprange_value, values + cliprange_value)
    vf_losses1 = np.square(vpred - returns)
    vf_losses2 = np.square(vpredclipped - returns)
    vf_loss = 0.5 * np_masked_mean(np.maximum(vf_losses1, vf_losses2), mask)
    vf_clipfrac = np_masked_mean((vf_losses2 > vf_losses1).astype(np.float64), mask)
    logprobs_diff = new_logprobs - logprobs
    ratio = np.exp(logprobs_diff)
    pg_losses = -advantage * ratio
    pg_losses2 = -advantage * np.clip(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss = np_masked_mean(np.maximum(pg_losses, pg_losses2), mask)
    loss = pg_loss + vf_coef * vf_loss
    return loss, {
        "policy/approxkl_avg": 0.5 * (logprobs_diff**2).mean(),
        "policy/clipfrac_avg": np_masked_mean((pg_losses2 > pg_losses).astype(np.float64), mask),
        "loss/policy_avg": pg_loss, "loss/value_avg": vf_loss, "val/clipfrac_avg": vf_clipfrac,
        "val/ratio": ratio.mean(),
    }


def _f64(d):
    return {k: np.asarray(v, np.float64) if v.dtype != bool else v for k, v in d.items()}


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_ppo_token_rewards_match_trl(estimator):
    d = _rollout()
    fn = jax.jit(functools.partial(ppo_token_rewards, kl_coef=0.05, estimator=estimator))
    got = np.asarray(fn(d["scores"], d["logps"], d["ref_logps"], d["mask"]))
    e = _f64(d)
    want = np_token_rewards(e["scores"], e["logps"], e["ref_logps"], d["mask"], 0.05, estimator)
    np.testing.assert_allclose(got, want, **TOL)
    assert not got[~d["mask"]].any()


def test_ppo_token_rewards_empty_row_gets_nothing():
    d = _rollout()
    mask = d["mask"].copy()
    mask[2] = False
    got = np.asarray(ppo_token_rewards(d["scores"], d["logps"], d["ref_logps"], mask, 0.05))
    assert not got[2].any() and got[0, -1] != 0


def _loss_args(d):
    return (d["new_logps"], d["logps"], d["advantages"], d["mask"], d["new_values"], d["values"], d["returns"])


@pytest.mark.parametrize("cliprange,cliprange_value,vf_coef", [(0.2, 0.2, 0.1), (0.1, 0.5, 1.0)])
def test_ppo_loss_matches_trl(cliprange, cliprange_value, vf_coef):
    d = _rollout(1)
    fn = jax.jit(functools.partial(ppo_loss, cliprange=cliprange, cliprange_value=cliprange_value, vf_coef=vf_coef))
    loss, metrics = fn(*_loss_args(d))
    want_loss, want = np_ppo_loss(*_loss_args(_f64(d)), cliprange, cliprange_value, vf_coef)
    np.testing.assert_allclose(float(loss), want_loss, **TOL)
    assert set(metrics) == set(want)
    for k, v in want.items():
        np.testing.assert_allclose(float(metrics[k]), v, **TOL, err_msg=k)
    assert 0 < want["policy/clipfrac_avg"] < 1 and 0 < want["val/clipfrac_avg"] < 1  # both clips bite


def test_ppo_pipeline_rewards_gae_whiten_loss():
    """Rollout to loss as PPOTrainer chains it: token rewards, GAE, whitened and zero-filled
    advantages, then the loss against the GAE returns."""
    d = _rollout(2)
    m = d["mask"]
    kl_coef, gamma, lam = 0.05, 1.0, 0.95

    @jax.jit
    def ours(d):
        rewards = ppo_token_rewards(d["scores"], d["logps"], d["ref_logps"], m, kl_coef, "k1")
        adv, returns = gae(rewards, d["values"], m, gamma, lam)
        adv = jax.numpy.where(m, masked_whiten(adv, m), 0.0)
        return ppo_loss(d["new_logps"], d["logps"], adv, m, d["new_values"], d["values"], returns,
                        cliprange=0.2, cliprange_value=0.2, vf_coef=0.1)[0]

    e = _f64(d)
    rewards = np_token_rewards(e["scores"], e["logps"], e["ref_logps"], m, kl_coef, "k1")
    values = np.where(m, e["values"], 0.0)
    lastgaelam, advantages_reversed = 0.0, []
    for t in reversed(range(T)):
        nextvalues = values[:, t + 1] if t < T - 1 else 0.0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = np.stack(advantages_reversed[::-1], axis=1)
    returns = advantages + values
    advantages = np.where(m, np_masked_whiten(advantages, m), 0.0)
    want, _ = np_ppo_loss(e["new_logps"], e["logps"], advantages, m, e["new_values"], values, returns, 0.2, 0.2, 0.1)
    np.testing.assert_allclose(float(ours({k: v for k, v in d.items() if k != "mask"})), want, **TOL)


def test_ppo_loss_guard_and_bad_input():
    d = _rollout(3)
    d["logps"][0, 0] -= 200.0  # exp(200) overflows f32 without the guard
    args = _loss_args(d)
    loss, _ = ppo_loss(*args, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1)
    g = jax.grad(lambda lp: ppo_loss(lp, *args[1:], cliprange=0.2, cliprange_value=0.2, vf_coef=0.1)[0])(args[0])
    assert np.isfinite(float(loss)) and np.isfinite(np.asarray(g)).all()
    with pytest.raises(ConfigError, match="cliprange=-0.1"):
        ppo_loss(*args, cliprange=-0.1, cliprange_value=0.2, vf_coef=0.1)
    with pytest.raises(UserError, match="ppo_loss takes"):
        ppo_loss(*args[:-1], args[-1][:, :2], cliprange=0.2, cliprange_value=0.2, vf_coef=0.1)
    with pytest.raises(UserError, match="ppo_token_rewards takes"):
        ppo_token_rewards(d["scores"][:2], d["logps"], d["ref_logps"], d["mask"], 0.05)
    with pytest.raises(ConfigError, match="rl.kl_coef=-1"):
        ppo_token_rewards(d["scores"], d["logps"], d["ref_logps"], d["mask"], -1)
    with pytest.raises(ConfigError, match="rl.kl_estimator='kl'"):
        ppo_token_rewards(d["scores"], d["logps"], d["ref_logps"], d["mask"], 0.05, "kl")
