"""`llm rm` as a command, from a briefly pretrained byte-level `tiny` on the built-in preference
pairs (data.seq_len=256: tiny's model.max_seq_len; the pairs that do not fit are skipped and
counted): held-out accuracy above chance with a lower held-out loss and a wider margin than the
start's, TRL's metric names, margins.png, re-running resumes bit for bit, and bad input is a
one-line error that leaves an existing run alone."""

from __future__ import annotations


import numpy as np
import pytest

from finetune_fixtures import FAST, corpus_and_start, llm_session
from test_cli_dpo import heldout, metric_rows, other_tokenizer, snapshot, write_jsonl

# N = 64 steps, a checkpoint and an eval at N/2, a constant learning rate (so a run stopped at
# N/2 and resumed to N trains the same schedule as one run to N).
ARGS = ("--config.data.seq_len=256", "--config.optim.lr=3e-4", "--config.optim.warmup_steps=0", "--config.optim.decay=constant",
        "--config.train.log_every=1", "--config.train.eval_every=32", "--config.checkpoint.every_steps=32", *FAST)
RM_NAMES = ("loss", "accuracy", "margin", "rewards/chosen", "rewards/rejected")


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    return corpus_and_start(tmp_path_factory)


def rm(workdir, data, pre, *extra: str) -> list[str]:
    return ["rm", "--config", "configs/rm_tiny.py", "--workdir", str(workdir), "--init-from", str(pre), "--data", str(data), *ARGS, *extra]


@pytest.fixture(scope="module")
def rm_runs(start, tmp_path_factory):
    """`whole` trains 64 steps; `resumed` stops at 32 (train.steps=32) and is run again to 64."""
    manifest, pre = start
    root = tmp_path_factory.mktemp("rm")
    whole, resumed = root / "whole", root / "resumed"
    results = llm_session(
        rm(whole, manifest, pre, "--config.train.steps=64"),
        rm(resumed, manifest, pre, "--config.train.steps=32"),
        rm(resumed, manifest, pre, "--config.train.steps=64"),
    )
    for code, err in results:
        assert code == 0, err[-3000:]
    return whole, resumed, [err for _, err in results]


@pytest.mark.slow
def test_rm_raises_held_out_accuracy_above_chance_and_names_its_metrics(rm_runs):
    whole = rm_runs[0]
    result = heldout(whole)
    rows = metric_rows(whole)
    start = rows[(0, "eval")]  # the start weights with the new head
    assert result["heldout_pairs"] == 45
    assert result["heldout_accuracy"] > 0.5, result
    assert result["heldout_loss"] < start["eval_loss"] - 0.01, (result, start)
    assert result["heldout_margin"] > start["eval_margin"] + 0.01, (result, start)
    for step in (32, 64):
        assert {*RM_NAMES, *(f"eval_{k}" for k in RM_NAMES)} <= set(rows[(step, "train")]) | set(rows[(step, "eval")])
    assert (whole / "margins.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (whole / "merged" / "reward_head.safetensors").is_file()


@pytest.mark.slow
def test_rm_stopped_at_half_resumes_bit_for_bit(rm_runs):
    whole, resumed, (_, _, second_half) = rm_runs
    assert "resumed from" in second_half and "(step 32)" in second_half
    expected = metric_rows(whole)
    assert sorted(k for k in expected if k[1] == "train") == [(s, "train") for s in range(1, 65)]
    assert metric_rows(resumed) == expected  # exact float equality, every step and eval
    assert heldout(resumed) == heldout(whole)

    from safetensors.numpy import load_file

    head, head_resumed = (load_file(w / "merged" / "reward_head.safetensors")["kernel"] for w in (whole, resumed))
    assert head.shape == (128, 1) and np.array_equal(head, head_resumed)
    from llm.checkpoint.params_io import load_params

    import jax

    (_, a), (_, b) = load_params(whole / "merged"), load_params(resumed / "merged")
    for (path, leaf), other in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b), strict=True):
        assert np.array_equal(np.asarray(leaf), np.asarray(other)), jax.tree_util.keystr(path)


@pytest.mark.slow
def test_rm_bad_input_is_one_line_and_leaves_an_existing_run_alone(start, rm_runs, tmp_path):
    from llm.data.tokenizer import load_tokenizer

    manifest, pre = start
    existing = rm_runs[1]
    before = snapshot(existing)
    no_rejected = write_jsonl(tmp_path / "no_rejected.jsonl", [{"prompt": "p", "chosen": "c"}] * 4)
    tok, fingerprint = other_tokenizer(tmp_path / "sp")
    pre_fingerprint = load_tokenizer(str(pre / "tokenizer")).fingerprint
    fresh = tmp_path / "fresh"
    cases = [
        (rm(existing, no_rejected, pre), "has no 'rejected' field (it has 'chosen', 'prompt'); each row needs 'chosen' and 'rejected'"),
        (rm(existing, manifest, pre, "--config.rm.center_rewards_coefficient=-1"), "rm.center_rewards_coefficient=-1.0 must be a finite number >= 0"),
        (rm(existing, manifest, pre, "--config.rm.bta=0.1"), "unknown config key 'rm.bta'"),
        (rm(existing, manifest, pre, "--config.train.steps=64", f"--config.data.tokenizer={tok}"),
         f"holds a run with a different config (data.tokenizer: '{pre / 'tokenizer'}' -> '{tok}');"),
        (rm(fresh, manifest, pre, f"--config.data.tokenizer={tok}"),
         f"checkpoint.init_from={str(pre)!r} was trained with tokenizer {pre_fingerprint[:12]}, but this run's "
         f"data.tokenizer={str(tok)!r} is {fingerprint[:12]}; use its tokenizer, or set checkpoint.allow_tokenizer_mismatch=true"),
        (["rm", "--workdir", str(existing)], "`llm rm` needs --config"),
    ]
    for (code, err), (command, message) in zip(llm_session(*(c for c, _ in cases)), cases):
        errors = [line for line in err.splitlines() if "error:" in line]
        assert code == 2 and len(errors) == 1 and message in errors[0], (command[5:], err[-2000:])
        assert "Traceback" not in err
    assert snapshot(existing) == before
