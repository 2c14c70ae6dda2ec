"""GRPO / RLOO group advantages, GAE and masked whitening against numpy (float64) transcriptions
of TRL 1.16 GRPOTrainer / RLOOTrainer and TRL 0.x PPOTrainer, on fixed tensors."""

import functools
import warnings

import jax
import numpy as np
import pytest

from llm.errors import ConfigError, UserError
from llm.rl.advantages import gae, group_advantages, masked_whiten

TOL = dict(rtol=1e-6, atol=1e-6)
G = 4


def _rewards():
    """6 groups of 4, f32 values: plain; one unscorable; one scorable; all equal (std 0, exact in
    binary); all unscorable; 0/1 rewards with an unscorable one."""
    rng = np.random.default_rng(0)
    r = rng.normal(0.0, 1.5, 6 * G).astype(np.float32)
    r[5] = np.nan
    r[8], r[10], r[11] = np.nan, np.nan, np.nan
    r[12:16] = 0.5
    r[16:20] = np.nan
    r[20:24] = [1.0, 0.0, np.nan, 1.0]
    return r


# ---- numpy transcriptions (float64) ----

def np_nanstd(x, axis=None):
    """trl.trainer.utils.nanstd: Bessel-corrected, NaN for fewer than 2 values."""
    mean = np.nanmean(x, axis=axis, keepdims=True)
    var = np.nanmean((x - mean) ** 2, axis=axis, keepdims=True)
    count = np.sum(~np.isnan(x), axis=axis, keepdims=True)
    var = var * np.where(count > 1, count / np.maximum(count - 1, 1), np.nan)
    std = np.sqrt(var)
    return std if axis is not None else std.reshape(())


def np_grpo(r, g, scale, eps=1e-4):
    """GRPOTrainer._generate_and_score_completions, sum_then_normalize."""
    r = r.astype(np.float64)
    grouped = r.reshape(-1, g)
    mean = np.repeat(np.nanmean(grouped, axis=1), g)
    if scale in ("group", "none"):
        std = np.repeat(np_nanstd(grouped, axis=1)[:, 0], g)
    else:
        std = np.broadcast_to(np_nanstd(r), r.shape)
    adv = r - mean
    if scale != "none":
        adv = adv / (std + eps)
    return np.nan_to_num(adv, nan=0.0)


def np_rloo(r, g, scale, eps=1e-4):
    """RLOOTrainer._generate_and_score_completions; scale=batch is normalize_advantages=True,
    scale=group divides by the group's reward std as GRPO does."""
    r = r.astype(np.float64)
    grouped = r.reshape(-1, g)
    counts = np.sum(~np.isnan(grouped), axis=1, keepdims=True)
    baselines = (np.nansum(grouped, axis=1, keepdims=True) - grouped) / (counts - 1)
    adv = r - baselines.reshape(-1)
    if scale == "batch":
        adv = (adv - np.nanmean(adv)) / (np_nanstd(adv) + eps)
    elif scale == "group":
        adv = adv / (np.repeat(np_nanstd(grouped, axis=1)[:, 0], g) + eps)
    return np.nan_to_num(adv, nan=0.0)


def np_gae(rewards, values, mask, gamma, lam):
    """TRL 0.x PPOTrainer's loop, padding values and rewards 0."""
    r, v = np.where(mask, rewards, 0.0), np.where(mask, values, 0.0)
    b, t_len = r.shape
    adv = np.zeros((b, t_len))
    for i in range(b):
        lastgaelam = 0.0
        for t in reversed(range(t_len)):
            nextvalues = v[i, t + 1] if t < t_len - 1 else 0.0
            delta = r[i, t] + gamma * nextvalues - v[i, t]
            lastgaelam = delta + gamma * lam * lastgaelam
            adv[i, t] = lastgaelam
    return adv * mask, (adv + v) * mask


def np_masked_whiten(x, mask, shift_mean=True):
    """trl.trainer.utils.masked_whiten (masked_mean, masked_var unbiased)."""
    mean = (x * mask).sum() / mask.sum()
    var = ((x - mean) ** 2 * mask).sum() / mask.sum()
    var = var * mask.sum() / (mask.sum() - 1)
    out = (x - mean) / np.sqrt(var + 1e-8)
    return out if shift_mean else out + mean


def _quiet(fn, *a):
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*a)


# ---- group advantages ----

@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_group_advantages_match_trl(estimator, scale):
    r = _rewards()
    got = np.asarray(group_advantages(r, G, estimator=estimator, scale=scale))
    want = _quiet(np_grpo if estimator == "grpo" else np_rloo, r, G, scale)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, **TOL)
    # unscorable rows (NaN) and the lone scorable row get exactly 0
    assert not got[[5, 8, 9, 10, 11, 16, 17, 18, 19, 22]].any()
    assert np.abs(got[:4]).min() > 0.01  # the plain group has a signal


def test_rloo_baseline_is_the_mean_of_the_other_scorable_rewards():
    r = _rewards()
    got = np.asarray(group_advantages(r, G, estimator="rloo", scale="none"))
    for i, x in enumerate(r.astype(np.float64)):
        group = range(i // G * G, i // G * G + G)
        others = [float(r[j]) for j in group if j != i and not np.isnan(r[j])]
        want = 0.0 if np.isnan(x) or not others else x - sum(others) / len(others)
        assert abs(got[i] - want) <= 1e-6, (i, got[i], want)


def test_group_advantages_jit_and_eps():
    r = _rewards()
    fn = jax.jit(functools.partial(group_advantages, num_generations=G, estimator="grpo", scale="group", eps=1e-6))
    np.testing.assert_allclose(np.asarray(fn(r)), _quiet(np_grpo, r, G, "group", 1e-6), **TOL)


def test_group_advantages_bad_input():
    r = np.zeros(8, np.float32)
    with pytest.raises(ConfigError, match="num_generations=1"):
        group_advantages(r, 1)
    with pytest.raises(UserError, match="num_generations=3"):
        group_advantages(r, 3)
    with pytest.raises(ConfigError, match="rl.advantage='ppo'"):
        group_advantages(r, 4, estimator="ppo")
    with pytest.raises(ConfigError, match="rl.scale_rewards='std'"):
        group_advantages(r, 4, scale="std")
    with pytest.raises(ConfigError, match="rl.std_eps=0"):
        group_advantages(r, 4, eps=0.0)


# ---- GAE and whitening ----

def _token_arrays(seed=1, b=5, t=7):
    rng = np.random.default_rng(seed)
    lengths = np.array([7, 4, 1, 0, 6])[:b]
    mask = np.arange(t)[None, :] < lengths[:, None]
    rewards = rng.normal(0, 1, (b, t)).astype(np.float32)
    values = rng.normal(0, 1, (b, t)).astype(np.float32)
    return rewards, values, mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0)])
def test_gae_matches_a_python_loop(gamma, lam):
    rewards, values, mask = _token_arrays()
    values_garbage = np.where(mask, values, np.nan).astype(np.float32)  # padding is never read
    adv, ret = jax.jit(functools.partial(gae, gamma=gamma, lam=lam))(rewards, values_garbage, mask)
    want_adv, want_ret = np_gae(rewards.astype(np.float64), values.astype(np.float64), mask, gamma, lam)
    np.testing.assert_allclose(np.asarray(adv), want_adv, **TOL)
    np.testing.assert_allclose(np.asarray(ret), want_ret, **TOL)
    assert not np.asarray(adv)[~mask].any() and not np.asarray(ret)[~mask].any()


def test_gae_bad_input():
    rewards, values, mask = _token_arrays()
    with pytest.raises(ConfigError, match="rl.lam=1.5"):
        gae(rewards, values, mask, 1.0, 1.5)
    with pytest.raises(UserError, match="one shape"):
        gae(rewards, values[:, :3], mask, 1.0, 0.95)


@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_matches_trl(shift_mean):
    x, _, mask = _token_arrays(seed=2)
    x = x * 3.0 + 1.0
    got = jax.jit(functools.partial(masked_whiten, shift_mean=shift_mean))(x, mask)
    want = np_masked_whiten(x.astype(np.float64), mask.astype(np.float64), shift_mean)
    np.testing.assert_allclose(np.asarray(got), want, **TOL)
