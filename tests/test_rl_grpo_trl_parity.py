"""The GRPO family's loss and metrics against TRL 1.16's own `GRPOTrainer._compute_loss`, called
on the same per-token log-probs (its model forward replaced by the fixed tensors): every
loss_agg TRL shares with us, token and sequence importance sampling, the KL term and the dual
clip. The numpy transcriptions in test_rl_grpo_losses.py check the same formulas by hand."""

from __future__ import annotations

import types
from collections import defaultdict

import jax
import numpy as np
import pytest

from llm.rl.grpo_losses import PolicyLoss, policy_loss

torch = pytest.importorskip("torch")
trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")

B, T = 6, 5


def tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = (rng.random((B, T)) < 0.8).astype(np.float32)
    mask[:, 0] = 1.0
    logps = rng.normal(-1.5, 0.4, (B, T)).astype(np.float32)
    return {
        "logps": logps,
        "old": (logps + rng.normal(0, 0.6, (B, T))).astype(np.float32),  # ratios well past the clip range
        "ref": (logps + rng.normal(0, 0.2, (B, T))).astype(np.float32),
        "adv": rng.normal(0, 1, B).astype(np.float32),
        "mask": mask,
    }


def trl_loss(x: dict, loss_type: str, level: str, beta: float, delta: float | None, eps_low: float, eps_high: float):
    """TRL's _compute_loss on x (one process, no gradient accumulation) -> (loss, metrics)."""
    logps = torch.tensor(x["logps"], dtype=torch.float64)
    accelerator = types.SimpleNamespace(num_processes=1, gather=lambda t: t, sync_gradients=True,
                                        reduce=lambda t, reduction="sum": t)
    fake = types.SimpleNamespace(
        loss_type=loss_type, importance_sampling_level=level, beta=beta, epsilon_low=eps_low, epsilon_high=eps_high,
        args=types.SimpleNamespace(delta=delta, use_bias_correction_kl=True, steps_per_generation=1),
        off_policy_mask_threshold=None, top_entropy_quantile=1.0, use_vllm=False, vllm_importance_sampling_correction=False,
        model=types.SimpleNamespace(training=True), accelerator=accelerator, current_gradient_accumulation_steps=1,
        _entropy_bonus_enabled=False, aux_loss_enabled=False, max_completion_length=T,
        _metrics=defaultdict(lambda: defaultdict(list)),
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
    )
    inputs = {
        "prompt_ids": torch.zeros((B, 1), dtype=torch.long), "prompt_mask": torch.ones((B, 1), dtype=torch.long),
        "completion_ids": torch.zeros((B, T), dtype=torch.long),
        "completion_mask": torch.tensor(x["mask"], dtype=torch.float64),
        "advantages": torch.tensor(x["adv"], dtype=torch.float64),
        "old_per_token_logps": torch.tensor(x["old"], dtype=torch.float64),
        "ref_per_token_logps": torch.tensor(x["ref"], dtype=torch.float64),
        "num_items_in_batch": torch.tensor(float(x["mask"].sum()), dtype=torch.float64),
    }
    loss = trl_grpo.GRPOTrainer._compute_loss(fake, None, inputs)
    return float(loss), {k: v[-1] for k, v in fake._metrics["train"].items()}


@pytest.mark.parametrize("loss_agg", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("beta,delta", [(0.0, None), (0.04, None), (0.04, 1.5)])
def test_policy_loss_equals_trls_compute_loss(loss_agg, level, beta, delta):
    x = tensors()
    want, want_metrics = trl_loss(x, loss_agg, level, beta, delta, 0.2, 0.28)
    spec = PolicyLoss(epsilon_low=0.2, epsilon_high=0.28, delta=delta or 0.0, importance_sampling=level, beta=beta,
                      kl_estimator="k3", loss_agg=loss_agg, max_completion_length=T)
    got, metrics = jax.jit(lambda l, o, a, m, r: policy_loss(spec, l, o, a, m, ref_logps=r))(
        x["logps"], x["old"], x["adv"], x["mask"], x["ref"])
    np.testing.assert_allclose(float(got), want, rtol=1e-6, atol=1e-6)
    for name in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean") + (("kl",) if beta else ()):
        np.testing.assert_allclose(float(metrics[name]), want_metrics[name], rtol=1e-6, atol=1e-6, err_msg=name)
    assert want_metrics["clip_ratio/region_mean"] > 0  # the tensors exercise the clip
