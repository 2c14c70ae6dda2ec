"""Parity with TRL itself: `llm dpo` / `llm rm` and trl.DPOTrainer / trl.RewardTrainer, from the
same tiny Llama (built with transformers, saved once), on the same 8 plain-text pairs as one batch
per step, with the same AdamW (constant LR, no warmup, decay or clipping), f32, no dropout. Per
step, our metrics.jsonl and TRL's logs agree within 1e-4 relative for 3 steps.

TRL's figures come from llm.bench.trl_peer (tested on its own in test_trl_peer.py). The token ids
are compared first, so a tokenization difference is reported as one rather than as a loss gap.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trl")

from llm.bench.trl_peer import trl_dpo_steps, trl_reward_steps  # noqa: E402
from llm.config.loading import load_config  # noqa: E402
from llm.finetune.start import apply_data, apply_init_from  # noqa: E402
from preference_models import PAIRS, build_models  # noqa: E402

pytestmark = pytest.mark.slow

STEPS = 3
RTOL = 1e-4
LR, B1, B2, EPS = 1e-3, 0.9, 0.999, 1e-8
# Ours: one pair per row, the 8 pairs as the one batch of every step, nothing held out (the same
# file is the validation split), TRL's plain-text form (this tokenizer adds no BOS, so neither do
# we), Adam as TRL's AdamW with weight decay 0, no clipping, a constant LR from step 1.
COMMON = [
    "data.strings_as_chat=false", "data.add_bos=false", "data.seq_len=128", "data.batch_size=8",
    f"train.steps={STEPS}", "train.log_every=1", "train.eval_every=0", "checkpoint.async_save=false",
    "finetune.export_merged=false", f"optim.lr={LR}", f"optim.b1={B1}", f"optim.b2={B2}", f"optim.eps={EPS}",
    "optim.weight_decay=0.0", "optim.clip_norm=0.0", "optim.warmup_steps=0", "optim.decay=constant",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity_models")
    out = build_models(root)
    out["pairs"] = root / "pairs.jsonl"
    out["pairs"].write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return out


def our_config(preset: str, start: Path, data: Path, overrides: list[str]):
    """The preset as `llm dpo/rm --config PRESET --init-from START --data DATA --config.X=...` builds it."""
    overrides = [*COMMON, *overrides]
    config = apply_init_from(load_config(preset, overrides), str(start), overrides)
    config = apply_data(config, str(data))
    config.data.eval_path = str(data)  # all 8 pairs train; nothing is held out by hash
    return config


def metrics_rows(workdir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def assert_steps_equal(ours: list[dict], theirs: list[dict], names: tuple[str, ...], scale: dict[str, float]) -> None:
    """Each name at each step within RTOL of TRL's value, relative to the value or, for one that is
    a difference of larger terms (a margin, exactly 0 at step 1 in TRL), to those terms' scale."""
    assert [r["step"] for r in ours] == [r["step"] for r in theirs] == list(range(1, STEPS + 1))
    for mine, trl_row in zip(ours, theirs):
        for name in names:
            bound = RTOL * max(abs(trl_row[name]), scale.get(name, 0.0))
            assert abs(mine[name] - trl_row[name]) <= bound, (
                f"step {trl_row['step']} {name}: ours {mine[name]!r}, TRL {trl_row[name]!r} (|diff| {abs(mine[name] - trl_row[name]):.3g} > {bound:.3g})"
            )


def our_pairs(config) -> list[dict]:
    from llm.data.pairs import load_pairs

    pairs, _ = load_pairs(config, "train")
    return [{"prompt_ids": p.prompt.tolist(), "chosen_ids": p.chosen.tolist(), "rejected_ids": p.rejected.tolist()}
            for p in sorted(pairs, key=lambda p: p.index)]


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_dpo_matches_trl(models, tmp_path, loss):
    from llm.finetune.preference import run_dpo

    beta = 0.1
    theirs = trl_dpo_steps(models["lm"], None, PAIRS, loss_type=loss, beta=beta, steps=STEPS, lr=LR,
                           adam_b1=B1, adam_b2=B2, adam_eps=EPS, batch_size=8)
    config = our_config("configs/dpo_full_tiny.py", models["lm"], models["pairs"],
                        [f"dpo.loss={loss}", f"dpo.beta={beta}", "dpo.max_pairs_per_row=1"])
    assert our_pairs(config) == theirs["token_ids"], "our data path tokenizes the pairs differently from TRL"
    run_dpo(config, tmp_path / "dpo")
    ours = metrics_rows(tmp_path / "dpo")
    # Margins and rewards are differences of beta * log-prob sums: their rounding scales with those.
    logps = max(abs(r[k]) for r in theirs["steps"] for k in ("logps/chosen", "logps/rejected"))
    scale = {k: beta * logps for k in ("rewards/margins", "rewards/chosen", "rewards/rejected")}
    assert_steps_equal(ours, theirs["steps"], ("loss", "rewards/margins", "rewards/chosen", "rewards/rejected",
                                               "logps/chosen", "logps/rejected"), scale)
    # Accuracy counts pairs with a positive margin: at step 1 every margin is 0 (a tie) on both sides
    # up to rounding, so it is compared from step 2 on, where the margins are far from 0.
    for mine, trl_row in list(zip(ours, theirs["steps"]))[1:]:
        assert mine["rewards/accuracies"] == pytest.approx(trl_row["rewards/accuracies"], rel=RTOL)
    first = math.log(2) if loss == "sigmoid" else (1 / (2 * beta)) ** 2
    assert ours[0]["loss"] == pytest.approx(first, rel=RTOL)


def test_reward_model_matches_trl(models, tmp_path):
    from llm.finetune.reward import run_reward

    theirs = trl_reward_steps(models["rm"], None, PAIRS, steps=STEPS, lr=LR, adam_b1=B1, adam_b2=B2, adam_eps=EPS, batch_size=8)
    config = our_config("configs/rm_tiny.py", models["rm"], models["pairs"], ["rm.max_pairs_per_row=1"])
    ids = our_pairs(config)
    assert [p["prompt_ids"] + p["chosen_ids"] for p in ids] == [t["chosen_ids"] for t in theirs["token_ids"]]
    assert [p["prompt_ids"] + p["rejected_ids"] for p in ids] == [t["rejected_ids"] for t in theirs["token_ids"]]
    run_reward(config, tmp_path / "rm")
    ours = metrics_rows(tmp_path / "rm")
    rewards = max(abs(r[k]) for r in theirs["steps"] for k in ("min_reward", "max_reward"))
    assert_steps_equal(ours, theirs["steps"], ("loss", "accuracy", "margin"), {"margin": rewards})
    assert np.isfinite([r["loss"] for r in ours]).all()
