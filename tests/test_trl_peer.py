"""The TRL peer (llm.bench.trl_peer) on its own: it runs TRL's trainers deterministically and
reports TRL's figures, checked against what is known independently of both TRL and `llm`."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

from llm.bench.trl_peer import run_in_subprocess, trl_dpo_steps, trl_reward_steps  # noqa: E402
from llm.errors import UserError  # noqa: E402
from preference_models import PAIRS, build_models  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("preference_models"))


def test_dpo_first_step_is_log2_and_training_moves(models):
    """Policy = reference at step 1: loss log 2, margins 0; TRL's EOS is on both answers; the same
    8 pairs every step, so steps 2-3 see one batch of the same tokens and the margin grows."""
    out = trl_dpo_steps(models["lm"], None, PAIRS, loss_type="sigmoid", beta=0.1, steps=3, lr=1e-3)
    first, *rest = out["steps"]
    assert first["loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert first["rewards/margins"] == 0.0 and first["rewards/accuracies"] == 0.0
    assert all(ids["chosen_ids"][-1] == 1 and ids["rejected_ids"][-1] == 1 for ids in out["token_ids"])  # </s>
    assert len(set(out["tokens_per_step"])) == 1 and out["tokens_per_step"][0] == first["num_tokens"]
    assert rest[0]["loss"] < first["loss"] and rest[1]["rewards/margins"] > rest[0]["rewards/margins"] > 0
    assert out["tokens_per_s"] > 0 and out["peak_rss_bytes"] > 0


def test_ipo_first_step_and_lora_reference(models):
    """IPO at policy = reference: (0 - 1/(2 beta))^2. With LoRA the reference is the adapters-off
    base, so the first step is the same as full fine-tuning's."""
    out = trl_dpo_steps(models["lm"], None, PAIRS, loss_type="ipo", beta=0.1, steps=2, lr=1e-2, lora_rank=4)
    assert out["first_step_loss"] == pytest.approx(25.0, rel=1e-6)
    assert out["steps"][1]["loss"] < 25.0


def test_reward_first_step_matches_a_direct_forward(models):
    """Step 1's loss and accuracy equal -logsigmoid(r_c - r_r) and (r_c > r_r) from the reward
    model's own forward on prompt + answer + EOS, one sequence at a time (no padding)."""
    import torch
    import transformers

    out = trl_reward_steps(models["rm"], None, PAIRS, steps=2, lr=1e-3)
    tok = transformers.AutoTokenizer.from_pretrained(models["rm"])
    model = transformers.AutoModelForSequenceClassification.from_pretrained(models["rm"], dtype=torch.float32).eval()

    def reward(text: str) -> float:
        with torch.no_grad():
            return float(model(**tok(text + tok.eos_token, return_tensors="pt")).logits[0, 0])

    rc = np.array([reward(p["prompt"] + p["chosen"]) for p in PAIRS])
    rr = np.array([reward(p["prompt"] + p["rejected"]) for p in PAIRS])
    loss = float(np.mean(np.logaddexp(0.0, -(rc - rr))))
    first = out["steps"][0]
    assert first["loss"] == pytest.approx(loss, rel=1e-5)
    assert first["accuracy"] == pytest.approx(float(np.mean(rc > rr)))
    assert first["margin"] == pytest.approx(float(np.mean(rc - rr)), rel=1e-5, abs=1e-6)


def test_subprocess_gives_the_same_steps(models):
    """The bench's way (a fresh process, its own peak RSS) gives the in-process figures."""
    here = trl_dpo_steps(models["lm"], None, PAIRS[:4], steps=2, batch_size=4)
    there = run_in_subprocess("dpo", models["lm"], None, PAIRS[:4], steps=2, batch_size=4)
    assert [s["loss"] for s in there["steps"]] == [s["loss"] for s in here["steps"]]
    assert there["token_ids"] == here["token_ids"]


def test_bad_input_is_one_line(models):
    with pytest.raises(UserError, match="no string 'rejected'"):
        trl_dpo_steps(models["lm"], None, [{"prompt": "a", "chosen": "b"}])
    with pytest.raises(UserError, match="optimizer='lion'"):
        trl_dpo_steps(models["lm"], None, PAIRS, optimizer="lion")
