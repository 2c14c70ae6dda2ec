"""Preference and reward-model losses against numpy transcriptions of TRL 1.16's formulas and,
where `trl` is installed, against TRL's own loss code on the same numbers."""

import math
from collections import defaultdict
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.errors import ConfigError, UserError
from llm.rl.dpo_losses import DPOLoss, dpo_loss
from llm.rl.reward_loss import reward_loss

B = 8
TOL = dict(rtol=1e-6, atol=1e-6)


def _pairs(seed=0):
    """Fixed random per-pair log-prob sums and answer lengths, rounded to f32 (what the loss sees)."""
    rng = np.random.default_rng(seed)
    nc, nr = rng.integers(2, 12, B).astype(np.float32), rng.integers(2, 12, B).astype(np.float32)
    c, r = -nc * rng.uniform(0.2, 2.0, B), -nr * rng.uniform(0.2, 2.0, B)
    rc, rr = c + rng.normal(0, 2.0, B), r + rng.normal(0, 2.0, B)
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    return dict(c=f32(c), r=f32(r), rc=f32(rc), rr=f32(rr), nc=nc, nr=nr)


# ---- numpy transcriptions of TRL 1.16 (float64) ----

def _logsig(x):
    return -np.logaddexp(0.0, -x)


def np_dpo(p, loss, beta, e=0.0, gamma=0.5, lam=0.1, sft=0.0, nll=None):
    """TRL: DPOTrainer._compute_loss (sigmoid, robust, hinge, ipo, sft), CPOTrainer.cpo_loss (simpo;
    sigmoid's smoothing), ORPOTrainer.odds_ratio_loss (orpo). Returns (loss, metrics)."""
    d = {k: np.asarray(v, np.float64) for k, v in p.items()}
    c, r, nc, nr = d["c"], d["r"], d["nc"], d["nr"]
    out = {}
    if loss in ("simpo", "orpo"):
        lc, lr = c / nc, r / nr  # get_batch_logps(average_log_prob=True)
        if loss == "simpo":
            x = beta * (lc - lr - gamma / beta)
            per = -_logsig(x) * (1 - e) - _logsig(-x) * e
        else:
            log1mexp = lambda a: np.log(-np.expm1(a))  # noqa: E731
            log_odds = (lc - lr) - (log1mexp(lc) - log1mexp(lr))
            ratio = _logsig(log_odds)
            per = -lam * ratio
            out.update(log_odds_ratio=ratio.mean(), log_odds_chosen=log_odds.mean())
        rew_c, rew_r = beta * lc, beta * lr
    else:
        cr, rr_ = c - d["rc"], r - d["rr"]
        delta = cr - rr_
        lc, lr = c, r
        if loss == "sigmoid":
            per = -(1 - e) * _logsig(beta * delta) - e * _logsig(-beta * delta)
        elif loss == "robust":
            per = (-(1 - e) * _logsig(beta * delta) - (-e * _logsig(-beta * delta))) / (1 - 2 * e)
        elif loss == "hinge":
            per = np.maximum(0.0, 1 - beta * delta)
        elif loss == "ipo":
            per = (cr / np.maximum(nc, 1) - rr_ / np.maximum(nr, 1) - 1 / (2 * beta)) ** 2
        rew_c, rew_r = beta * cr, beta * rr_
    total = per.mean()
    weight = 1.0 if loss == "orpo" else sft
    if weight:
        s, n = (c, nc) if nll is None else (np.asarray(nll[0], np.float64), np.asarray(nll[1], np.float64))
        out["nll_loss"] = -s.sum() / n.sum()  # CrossEntropyLoss mean over every chosen token
        total = total + weight * out["nll_loss"]
    out.update({
        "rewards/chosen": rew_c.mean(), "rewards/rejected": rew_r.mean(),
        "rewards/accuracies": (rew_c > rew_r).mean(), "rewards/margins": (rew_c - rew_r).mean(),
        "logps/chosen": lc.mean(), "logps/rejected": lr.mean(),
    })
    return total, out


def _ours(p, spec, **kw):
    ref = {} if not spec.needs_reference else dict(ref_chosen_logps=p["rc"], ref_rejected_logps=p["rr"])
    return dpo_loss(spec, p["c"], p["r"], p["nc"], p["nr"], **ref, **kw)


def _close(ours, want):
    loss, metrics = ours
    np.testing.assert_allclose(float(loss), want[0], **TOL)
    assert set(metrics) == set(want[1])
    for k, v in want[1].items():
        np.testing.assert_allclose(float(metrics[k]), v, **TOL, err_msg=k)


CASES = [
    ("sigmoid", dict(beta=0.1)),
    ("sigmoid", dict(beta=0.3, label_smoothing=0.2)),
    ("sigmoid", dict(beta=0.1, sft_weight=0.7)),
    ("robust", dict(beta=0.2, label_smoothing=0.1)),
    ("robust", dict(beta=0.2)),
    ("hinge", dict(beta=0.5)),
    ("ipo", dict(beta=0.1)),
    ("ipo", dict(beta=2.0, sft_weight=0.3)),
    ("simpo", dict(beta=2.0)),
    ("simpo", dict(beta=2.5, simpo_gamma=1.2, label_smoothing=0.15, sft_weight=1.0)),
    ("orpo", dict(beta=0.1)),
    ("orpo", dict(beta=0.3, orpo_lambda=0.5)),
]


def _np_kwargs(kw):
    return dict(beta=kw["beta"], e=kw.get("label_smoothing", 0.0), gamma=kw.get("simpo_gamma", 0.5),
                lam=kw.get("orpo_lambda", 0.1), sft=kw.get("sft_weight", 0.0))


def _orpo_nll(p):
    """Chosen log-prob sum and count over prompt and answer (a 5-token prompt per pair)."""
    return p["c"] - np.float32(5 * 0.7), p["nc"] + 5


@pytest.mark.parametrize("loss,kw", CASES)
def test_loss_matches_numpy_transcription_of_trl(loss, kw):
    p = _pairs()
    spec = DPOLoss(loss=loss, **kw)
    nll = _orpo_nll(p) if loss == "orpo" else None
    extra = {} if nll is None else dict(chosen_nll_logps=nll[0], chosen_nll_tokens=nll[1])
    _close(_ours(p, spec, **extra), np_dpo(p, loss, nll=nll, **_np_kwargs(kw)))


def test_ipo_normalises_by_answer_length_and_simpo_shifts_by_gamma_over_beta():
    """The two details a transcription could get wrong, pinned by values worked by hand."""
    ipo = DPOLoss(loss="ipo", beta=0.5)
    one = lambda x: jnp.array([x], jnp.float32)  # noqa: E731
    # chosen log-ratio 4 over 4 tokens, rejected -2 over 2 tokens: (1 - (-1) - 1/(2*0.5))^2 = 1
    loss, _ = dpo_loss(ipo, one(-4.0), one(-6.0), one(4), one(2), one(-8.0), one(-4.0))
    assert float(loss) == pytest.approx(1.0, abs=1e-6)
    simpo = DPOLoss(loss="simpo", beta=2.0, simpo_gamma=1.0)
    # averages -1 and -2: -logsigmoid(2 * (1 - 1/2)) = log(1 + e^-1)
    loss, m = dpo_loss(simpo, one(-3.0), one(-8.0), one(3), one(4))
    assert float(loss) == pytest.approx(math.log1p(math.exp(-1)), abs=1e-6)
    assert float(m["logps/chosen"]) == pytest.approx(-1.0) and float(m["rewards/chosen"]) == pytest.approx(-2.0)


def test_pair_mask_drops_empty_slots_from_loss_metrics_and_gradients():
    p = _pairs(1)
    keep = np.arange(B) < 5
    padded = {k: np.where(keep, v, np.float32(0.0)) for k, v in p.items()}  # empty slots: 0 log-prob, 0 tokens
    for loss in ("sigmoid", "ipo", "simpo", "orpo"):
        spec = DPOLoss(loss=loss)
        extra = lambda q: dict(chosen_nll_logps=q["c"], chosen_nll_tokens=q["nc"]) if loss == "orpo" else {}  # noqa: E731
        sub = {k: v[:5] for k, v in p.items()}
        _close(_ours(padded, spec, pair_mask=keep, **extra(padded)), np_dpo(sub, loss, 0.1, nll=(sub["c"], sub["nc"])))

        def f(c):
            return _ours({**padded, "c": c}, spec, pair_mask=keep, **extra({**padded, "c": c}))[0]

        g = jax.grad(f)(jnp.asarray(padded["c"]))
        assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[~keep] == 0) and np.any(np.asarray(g)[keep] != 0)


@pytest.mark.parametrize("loss,kw", CASES)
def test_gradients_and_metrics_are_finite(loss, kw):
    p = _pairs(2)
    spec = DPOLoss(loss=loss, **kw)
    extra = dict(chosen_nll_logps=_orpo_nll(p)[0], chosen_nll_tokens=_orpo_nll(p)[1]) if loss == "orpo" else {}

    def f(c, r):
        return _ours({**p, "c": c, "r": r}, spec, **extra)[0]

    gc, gr = jax.grad(f, argnums=(0, 1))(jnp.asarray(p["c"]), jnp.asarray(p["r"]))
    assert np.all(np.isfinite(gc)) and np.all(np.isfinite(gr)) and np.any(gc != 0)
    _, metrics = _ours(p, spec, **extra)
    assert all(np.isfinite(float(v)) for v in metrics.values())


def test_jit_gives_the_same_numbers():
    p = _pairs(3)
    spec = DPOLoss(loss="robust", beta=0.2, label_smoothing=0.1)
    eager = _ours(p, spec)
    jitted = jax.jit(lambda q: _ours(q, spec))(p)
    np.testing.assert_allclose(float(jitted[0]), float(eager[0]), **TOL)


@pytest.mark.parametrize("kwargs,match", [
    (dict(beta=0.0), "dpo.beta=0.0"),
    (dict(beta=-0.1), "dpo.beta=-0.1"),
    (dict(beta=float("nan")), "dpo.beta=nan"),
    (dict(loss="kto"), "dpo.loss='kto'"),
    (dict(loss="robust", label_smoothing=0.5), "label_smoothing=0.5"),
    (dict(loss="hinge", label_smoothing=0.1), "no effect on dpo.loss=hinge"),
    (dict(loss="ipo", simpo_gamma=0.5), "read only by dpo.loss=simpo"),
    (dict(loss="simpo", orpo_lambda=0.5), "read only by dpo.loss=orpo"),
    (dict(loss="orpo", sft_weight=1.0), "does not apply to orpo"),
    (dict(sft_weight=-1.0), "dpo.sft_weight=-1.0"),
])
def test_bad_settings_fail_when_built(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DPOLoss(**kwargs)


def test_reference_passed_to_a_reference_free_loss_or_missing_is_an_error():
    p = _pairs()
    for loss in ("simpo", "orpo"):
        with pytest.raises(ConfigError, match=f"dpo.loss={loss} has no reference"):
            dpo_loss(DPOLoss(loss=loss), p["c"], p["r"], p["nc"], p["nr"], p["rc"], p["rr"])
    for loss in ("sigmoid", "robust", "hinge", "ipo"):
        with pytest.raises(ConfigError, match=f"dpo.loss={loss} needs reference"):
            dpo_loss(DPOLoss(loss=loss), p["c"], p["r"], p["nc"], p["nr"])
    with pytest.raises(UserError, match="both ref_chosen_logps and ref_rejected_logps"):
        dpo_loss(DPOLoss(), p["c"], p["r"], p["nc"], p["nr"], p["rc"])
    with pytest.raises(UserError, match="orpo needs chosen_nll_logps"):
        dpo_loss(DPOLoss(loss="orpo"), p["c"], p["r"], p["nc"], p["nr"])
    with pytest.raises(UserError, match="dpo.sft_weight"):
        dpo_loss(DPOLoss(), p["c"], p["r"], p["nc"], p["nr"], p["rc"], p["rr"], chosen_nll_logps=p["c"], chosen_nll_tokens=p["nc"])
    with pytest.raises(UserError, match="shapes"):
        dpo_loss(DPOLoss(), p["c"], p["r"][:3], p["nc"], p["nr"], p["rc"], p["rr"])


# ---- reward model ----

def _rewards(seed=4):
    rng = np.random.default_rng(seed)
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    return f32(rng.normal(0.5, 1.5, B)), f32(rng.normal(0, 1.5, B)), f32(rng.uniform(0, 1, B))


def np_reward(rc, rr, margin=None, center=None):
    """TRL: RewardTrainer.compute_loss."""
    rc, rr = rc.astype(np.float64), rr.astype(np.float64)
    shift = rc - rr if margin is None else rc - rr - margin.astype(np.float64)
    loss = -_logsig(shift).mean()
    if center is not None:
        loss += center * np.mean((rc + rr) ** 2)
    both = np.concatenate([rc, rr])
    return loss, {"accuracy": (rc > rr).mean(), "margin": (rc - rr).mean(), "mean_reward": both.mean(),
                  "min_reward": both.min(), "max_reward": both.max(),
                  "rewards/chosen": rc.mean(), "rewards/rejected": rr.mean()}


@pytest.mark.parametrize("use_margin,center", [(False, None), (True, None), (True, 0.01), (False, 0.3)])
def test_reward_loss_matches_numpy_transcription_of_trl(use_margin, center):
    rc, rr, margin = _rewards()
    margin = margin if use_margin else None
    _close(reward_loss(rc, rr, margin=margin, center_rewards_coefficient=center), np_reward(rc, rr, margin, center))
    g = jax.grad(lambda a, b: reward_loss(a, b, margin=margin, center_rewards_coefficient=center)[0], (0, 1))(rc, rr)
    assert all(np.all(np.isfinite(x)) for x in g)


def test_reward_loss_mask_and_errors():
    rc, rr, margin = _rewards(5)
    keep = np.arange(B) < 6
    _close(reward_loss(np.where(keep, rc, 9.0), rr, margin=margin, center_rewards_coefficient=0.1, pair_mask=keep),
           np_reward(rc[:6], rr[:6], margin[:6], 0.1))
    with pytest.raises(ConfigError, match="center_rewards_coefficient=-1"):
        reward_loss(rc, rr, center_rewards_coefficient=-1.0)
    with pytest.raises(UserError, match="shapes"):
        reward_loss(rc, rr, margin=margin[:2])


# ---- TRL's own code on the same numbers (no trainer built: its loss methods on a stand-in self) ----

class _Accel:
    device = "cpu"

    @staticmethod
    def gather(t):
        return t

    gather_for_metrics = gather
    unwrap_model = gather


def _stand_in(**attrs):
    return SimpleNamespace(model=SimpleNamespace(training=True), accelerator=_Accel(), aux_loss_enabled=False,
                           _metrics=defaultdict(lambda: defaultdict(list)), **attrs)


def _token_logps(torch, sums, counts, width):
    """(rows, width) per-token log-probs, each row's sum spread over its first `count` positions."""
    counts = torch.as_tensor(counts, dtype=torch.long)
    mask = torch.arange(width)[None, :] < counts[:, None]
    per = torch.as_tensor(sums, dtype=torch.float64)[:, None] / counts[:, None]
    return torch.where(mask, per, torch.zeros((), dtype=torch.float64)), mask


@pytest.mark.parametrize("loss_types,weights,beta,e", [
    (["sigmoid"], [1.0], 0.1, 0.0), (["robust"], [1.0], 0.2, 0.1), (["hinge"], [1.0], 0.5, 0.0),
    (["ipo"], [1.0], 0.1, 0.0), (["sigmoid", "sft"], [1.0, 0.7], 0.1, 0.0),
])
def test_dpo_losses_equal_trl_dpotrainer(loss_types, weights, beta, e):
    torch = pytest.importorskip("torch")
    trl = pytest.importorskip("trl")
    p = _pairs()
    width = int(max(p["nc"].max(), p["nr"].max())) + 2
    logps, shift_mask = _token_logps(torch, np.concatenate([p["c"], p["r"]]), np.concatenate([p["nc"], p["nr"]]), width)
    completion_mask = torch.cat([torch.zeros(2 * B, 1, dtype=torch.long), shift_mask.long()], dim=1)  # prompt, answer
    zeros = torch.zeros(2 * B, width)
    outputs = SimpleNamespace(log_probs=logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())
    inputs = {"input_ids": torch.zeros(2 * B, width + 1, dtype=torch.long), "attention_mask": torch.ones(2 * B, width + 1),
              "completion_mask": completion_mask, "ref_chosen_logps": torch.as_tensor(p["rc"], dtype=torch.float64),
              "ref_rejected_logps": torch.as_tensor(p["rr"], dtype=torch.float64)}
    me = _stand_in(ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=loss_types,
                   loss_weights=weights, beta=beta, label_smoothing=e, use_weighting=False, _total_train_tokens=0,
                   _tp_size=1, args=SimpleNamespace())
    trl_loss = trl.DPOTrainer._compute_loss(me, lambda **kw: outputs, inputs, False)
    trl_metrics = {k: v[0] for k, v in me._metrics["train"].items() if k.startswith(("rewards/", "logps/"))}
    sft = weights[1] if "sft" in loss_types else 0.0
    spec = DPOLoss(loss=loss_types[0], beta=beta, label_smoothing=e, sft_weight=sft)
    loss, metrics = _ours(p, spec)
    np.testing.assert_allclose(float(loss), float(trl_loss), **TOL)
    assert len(trl_metrics) == 6
    for k, v in trl_metrics.items():
        np.testing.assert_allclose(float(metrics[k]), v, **TOL, err_msg=k)


def _cpo_style_forward(torch, p, trainer_cls):
    """TRL's own get_batch_logps (average over answer tokens) on logits whose log-softmax is the
    per-token log-probs (two-token vocabulary), and the chosen answers' token-mean NLL."""
    width = int(max(p["nc"].max(), p["nr"].max())) + 1
    per, mask = _token_logps(torch, np.concatenate([p["c"], p["r"]]), np.concatenate([p["nc"], p["nr"]]), width)
    per = torch.where(mask, per, torch.full((), -1.0, dtype=torch.float64))
    logits = torch.stack([per, torch.log(-torch.expm1(per))], dim=-1)  # log_softmax(.)[0] == per
    logits = torch.cat([logits, torch.zeros(2 * B, 1, 2, dtype=torch.float64)], dim=1)
    labels = torch.cat([torch.full((2 * B, 1), -100), torch.where(mask, 0, -100)], dim=1)  # prompt token, answer
    avg = trainer_cls.get_batch_logps(logits, labels, average_log_prob=True)
    return avg[:B], avg[B:], logits[:B], logits[B:]


@pytest.mark.parametrize("beta,gamma,e,alpha", [(2.0, 0.5, 0.0, 0.0), (2.5, 1.2, 0.15, 1.0)])
def test_simpo_equals_trl_cpotrainer(beta, gamma, e, alpha):
    torch = pytest.importorskip("torch")
    pytest.importorskip("trl")
    from trl.experimental.cpo import CPOTrainer

    p = _pairs()
    avg_c, avg_r, logits_c, logits_r = _cpo_style_forward(torch, p, CPOTrainer)
    nll = torch.as_tensor(-p["c"].astype(np.float64).sum() / p["nc"].sum())
    me = _stand_in(alpha=0.0, beta=beta, label_smoothing=e, loss_type="simpo", simpo_gamma=gamma, cpo_alpha=alpha)
    me.cpo_loss = lambda *a: CPOTrainer.cpo_loss(me, *a)
    me.concatenated_forward = lambda model, batch: (avg_c, avg_r, logits_c, logits_r, nll)
    trl_loss, trl_metrics = CPOTrainer.get_batch_loss_metrics(me, None, None)
    loss, metrics = _ours(p, DPOLoss(loss="simpo", beta=beta, simpo_gamma=gamma, label_smoothing=e, sft_weight=alpha))
    np.testing.assert_allclose(float(loss), float(trl_loss), **TOL)
    for k in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"):
        np.testing.assert_allclose(float(metrics[k]), trl_metrics[k], **TOL, err_msg=k)


@pytest.mark.parametrize("lam", [0.1, 0.5])
def test_orpo_equals_trl_orpotrainer(lam):
    torch = pytest.importorskip("torch")
    pytest.importorskip("trl")
    from trl.experimental.orpo import ORPOTrainer

    p = _pairs()
    avg_c, avg_r, logits_c, logits_r = _cpo_style_forward(torch, p, ORPOTrainer)
    nll_sum, nll_tokens = _orpo_nll(p)
    nll = torch.as_tensor(-nll_sum.astype(np.float64).sum() / nll_tokens.sum())
    me = _stand_in(beta=lam)  # TRL's ORPO beta is the paper's lambda and also scales the rewards
    me.odds_ratio_loss = lambda *a: ORPOTrainer.odds_ratio_loss(me, *a)
    me.concatenated_forward = lambda model, batch: (avg_c, avg_r, logits_c, logits_r, nll)
    trl_loss, trl_metrics = ORPOTrainer.get_batch_loss_metrics(me, None, None)
    spec = DPOLoss(loss="orpo", beta=lam, orpo_lambda=lam)
    loss, metrics = _ours(p, spec, chosen_nll_logps=nll_sum, chosen_nll_tokens=nll_tokens)
    np.testing.assert_allclose(float(loss), float(trl_loss), **TOL)
    for k, v in metrics.items():
        np.testing.assert_allclose(float(v), trl_metrics[k], **TOL, err_msg=k)


@pytest.mark.parametrize("use_margin,center", [(False, None), (True, 0.01)])
def test_reward_loss_equals_trl_rewardtrainer(use_margin, center):
    torch = pytest.importorskip("torch")
    trl = pytest.importorskip("trl")
    rc, rr, margin = _rewards()
    scores = torch.as_tensor(np.concatenate([rc, rr]), dtype=torch.float64)[:, None]
    inputs = {"input_ids": torch.zeros(2 * B, 3, dtype=torch.long), "attention_mask": torch.ones(2 * B, 3)}
    if use_margin:
        inputs["margin"] = torch.as_tensor(margin, dtype=torch.float64)
    me = _stand_in(args=SimpleNamespace(center_rewards_coefficient=center), _total_train_tokens=0, _tp_size=1)
    trl_loss = trl.RewardTrainer.compute_loss(me, lambda **kw: SimpleNamespace(logits=scores), inputs)
    loss, metrics = reward_loss(rc, rr, margin=margin if use_margin else None, center_rewards_coefficient=center)
    np.testing.assert_allclose(float(loss), float(trl_loss), **TOL)
    for k in ("accuracy", "margin", "mean_reward", "min_reward", "max_reward"):
        np.testing.assert_allclose(float(metrics[k]), me._metrics["train"][k][0], **TOL, err_msg=k)
