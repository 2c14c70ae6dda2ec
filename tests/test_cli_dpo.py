"""`llm dpo` as a command, from a briefly pretrained byte-level `tiny` on the built-in preference
pairs: re-running resumes bit for bit (LoRA, and the full preset with its precomputed reference
read back, not recomputed), held-out rewards/accuracies rise above 0.5 with a positive margin,
TRL's metric names reach metrics.jsonl and TensorBoard, and bad input is a one-line error that
leaves an existing run alone.

tiny has model.max_seq_len=256, so every run passes data.seq_len=256: the pairs whose answers
do not fit are skipped and counted (about 260 of the 709 training pairs and 45 of the 101
validation pairs are kept)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from finetune_fixtures import FAST, corpus_and_start, llm_session

SEQ = "--config.data.seq_len=256"
TRL_NAMES = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected")
TIMING = ("step_time", "tokens_per_s")  # wall-clock: the only values two identical runs may differ in
# Full DPO, N = 24 steps with a checkpoint and an eval at N/2: a constant learning rate, so a run
# stopped at N/2 (train.steps=12) and resumed to N trains the same schedule as one run to N.
FULL = ("--config.optim.lr=1e-4", "--config.optim.warmup_steps=0", "--config.optim.decay=constant",
        "--config.train.log_every=1", "--config.train.eval_every=12", "--config.checkpoint.every_steps=12")
IDENTICAL = 3  # pairs with chosen == rejected added to the full runs' training data


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    return corpus_and_start(tmp_path_factory)


def dpo(config: str, workdir: Path, data, pre, *extra: str) -> list[str]:
    return ["dpo", "--config", config, "--workdir", str(workdir), "--init-from", str(pre), "--data", str(data), SEQ, *FAST, *extra]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def metric_rows(workdir: Path) -> dict[tuple[int, str], dict]:
    """(step, train|eval) -> the row without its timing; a resumed run never leaves a step twice."""
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        key = (row["step"], "eval" if any(k.startswith("eval_") for k in row) else "train")
        assert key not in out, f"{workdir / 'metrics.jsonl'} has two {key[1]} rows of step {key[0]}"
        out[key] = {k: v for k, v in row.items() if k not in TIMING}
    return out


def heldout(workdir: Path) -> dict:
    return {k: v for k, v in json.loads((workdir / "summary.json").read_text()).items() if k.startswith("heldout_")}


def snapshot(workdir: Path) -> dict[str, str]:
    """Every file under a workdir with a hash of its bytes and its modification time."""
    return {str(p.relative_to(workdir)): f"{hashlib.sha256(p.read_bytes()).hexdigest()} {p.stat().st_mtime_ns}"
            for p in sorted(workdir.rglob("*")) if p.is_file()}


def assert_ok(results) -> None:
    for code, err in results:
        assert code == 0, err[-3000:]


@pytest.fixture(scope="module")
def full_runs(start, tmp_path_factory):
    """Full DPO with the precomputed reference on the built-in training pairs plus IDENTICAL pairs
    whose answers are equal, held out on the built-in validation pairs: `whole` runs 24 steps;
    `resumed` stops at 12 (train.steps=12) and is run again with train.steps=24."""
    manifest, pre = start
    root = tmp_path_factory.mktemp("dpo_full")
    corpus = manifest.parent
    train_rows = [json.loads(line) for line in (corpus / "preference" / "train.jsonl").read_text().splitlines()]
    same = [{"prompt": f"Say {w}.", "chosen": f"{w}!", "rejected": f"{w}!"} for w in ("yes", "no", "maybe")[:IDENTICAL]]
    data = write_jsonl(root / "train.jsonl", train_rows[:5] + same + train_rows[5:])
    valid = f"--config.data.eval_path={corpus / 'preference' / 'validation.jsonl'}"
    whole, resumed = root / "whole", root / "resumed"
    args = ("configs/dpo_full_tiny.py", data, pre, valid, *FULL)
    results = llm_session(
        dpo(args[0], whole, *args[1:], "--config.train.steps=24"),
        dpo(args[0], resumed, *args[1:], "--config.train.steps=12"),
        dpo(args[0], resumed, *args[1:], "--config.train.steps=24"),
    )
    assert_ok(results)
    return whole, resumed, [err for _, err in results], (data, valid, *FULL, "--config.train.steps=24")


@pytest.mark.slow
def test_full_dpo_stopped_at_half_resumes_bit_for_bit_reading_its_reference_back(full_runs):
    whole, resumed, (_, first_half, second_half), _ = full_runs
    assert "reference log-probs of" in first_half and "computed from the start weights" in first_half
    assert f"reference log-probs read from {resumed / 'reference_logps.npz'}" in second_half
    assert "computed from the start weights" not in second_half, second_half[-3000:]
    assert "resumed from" in second_half and "(step 12)" in second_half
    a, b = np.load(whole / "reference_logps.npz"), np.load(resumed / "reference_logps.npz")
    assert all(np.array_equal(a[k], b[k]) for k in ("train", "validation"))

    expected, got = metric_rows(whole), metric_rows(resumed)
    assert sorted(k for k in expected if k[1] == "train") == [(s, "train") for s in range(1, 25)]
    assert sorted(k for k in expected if k[1] == "eval") == [(0, "eval"), (12, "eval"), (24, "eval")]
    assert got == expected  # exact float equality, every step and eval
    assert heldout(resumed) == heldout(whole)

    from llm.checkpoint.params_io import load_params

    _, final = load_params(whole / "merged")
    _, final_resumed = load_params(resumed / "merged")
    import jax

    leaves = jax.tree_util.tree_leaves_with_path(final)
    assert len(leaves) == len(jax.tree_util.tree_leaves(final_resumed))
    for (path, leaf), other in zip(leaves, jax.tree_util.tree_leaves(final_resumed)):
        assert np.array_equal(np.asarray(leaf), np.asarray(other)), jax.tree_util.keystr(path)


@pytest.mark.slow
def test_full_dpo_raises_held_out_accuracy_above_half_with_a_positive_margin(full_runs):
    whole = full_runs[0]
    result = heldout(whole)
    start = metric_rows(whole)[(0, "eval")]
    assert start["eval_rewards/margins"] == 0.0  # the policy is the reference at step 0
    assert result["heldout_pairs"] == 45
    assert result["heldout_rewards/accuracies"] > 0.5, result
    assert result["heldout_rewards/margins"] > 0.0, result
    assert result["heldout_loss"] < start["eval_loss"], (result, start)


@pytest.mark.slow
def test_identical_pairs_are_skipped_counted_and_training_proceeds(full_runs):
    whole, _, (err, *_), _ = full_runs
    assert f"skipped {IDENTICAL} train preference pairs whose chosen and rejected answers are identical" in err, err[-3000:]
    assert json.loads((whole / "summary.json").read_text())["step"] == 24


@pytest.mark.slow
def test_metrics_jsonl_and_tensorboard_carry_trl_names_and_margins_png_is_written(full_runs):
    whole = full_runs[0]
    rows = metric_rows(whole)
    train, evals = rows[(24, "train")], rows[(24, "eval")]
    assert set(TRL_NAMES) <= set(train), sorted(train)
    assert {f"eval_{k}" for k in TRL_NAMES} <= set(evals), sorted(evals)
    assert all(np.isfinite(train[k]) for k in TRL_NAMES)
    assert train["logps/chosen"] < 0 and train["logps/rejected"] < 0  # sums of log-probs
    assert train["rewards/margins"] == pytest.approx(train["rewards/chosen"] - train["rewards/rejected"], rel=1e-5, abs=1e-6)
    assert (whole / "margins.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(whole / "tensorboard"))
    events.Reload()
    tags = set(events.Tags().get("scalars", [])) | set(events.Tags().get("tensors", []))
    assert {"loss", *TRL_NAMES, *(f"eval_{k}" for k in TRL_NAMES)} <= tags, sorted(tags)


@pytest.mark.slow
def test_lora_dpo_stopped_at_half_resumes_bit_for_bit(start, tmp_path):
    manifest, pre = start
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    args = ("--config.optim.warmup_steps=0", "--config.optim.decay=constant", "--config.train.log_every=1",
            "--config.train.eval_every=2", "--config.checkpoint.every_steps=2")
    results = llm_session(
        dpo("configs/dpo_lora_tiny.py", whole, manifest, pre, *args, "--config.train.steps=4"),
        dpo("configs/dpo_lora_tiny.py", resumed, manifest, pre, *args, "--config.train.steps=2"),
        dpo("configs/dpo_lora_tiny.py", resumed, manifest, pre, *args, "--config.train.steps=4"),
    )
    assert_ok(results)
    assert "resumed from" in results[2][1] and "(step 2)" in results[2][1]
    assert "reference log-probs" not in results[0][1]  # LoRA: the adapters-off base, nothing precomputed
    expected = metric_rows(whole)
    assert sorted(expected) == sorted([(s, "train") for s in range(1, 5)] + [(s, "eval") for s in (0, 2, 4)])
    assert expected[(4, "train")]["update_norm"] > 0
    assert metric_rows(resumed) == expected
    assert heldout(resumed) == heldout(whole)

    from safetensors.numpy import load_file

    a, b = load_file(whole / "adapter" / "adapter.safetensors"), load_file(resumed / "adapter" / "adapter.safetensors")
    assert sorted(a) == sorted(b) and a
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    assert any(np.abs(v).max() > 0 for k, v in a.items() if k.endswith("lora_b"))  # the adapters trained


def other_tokenizer(directory: Path) -> tuple[Path, str]:
    """A 200-piece sentencepiece tokenizer: fits tiny's 256-token vocabulary, another fingerprint."""
    import inspect

    import llm.data.tokenizer
    from llm.data.tokenizer import train_sentencepiece

    tok = train_sentencepiece([inspect.getsource(llm.data.tokenizer)] * 3, 200, byte_fallback=False, chat_symbols=())
    tok.save(directory)
    return directory, tok.fingerprint


@pytest.mark.slow
def test_bad_input_is_one_line_and_leaves_an_existing_run_alone(start, full_runs, tmp_path):
    from llm.data.tokenizer import load_tokenizer

    manifest, pre = start
    existing = full_runs[1]  # a finished full DPO run: every bad command below targets it
    before = snapshot(existing)
    no_chosen = write_jsonl(tmp_path / "no_chosen.jsonl", [{"prompt": "p", "rejected": "r"}] * 4)
    no_rejected = write_jsonl(tmp_path / "no_rejected.jsonl", [{"prompt": "p", "chosen": "c"}] * 4)
    ok = [{"prompt": f"Say {i}.", "chosen": f"{i}!", "rejected": f"not {i}"} for i in range(30)]
    long_answer = {"prompt": "p" * 50, "chosen": "c" * 300, "rejected": "r"}
    one_too_long = write_jsonl(tmp_path / "one_too_long.jsonl", [long_answer, *ok])
    all_too_long = write_jsonl(tmp_path / "all_too_long.jsonl", [{**long_answer, "chosen": "c" * (300 + i)} for i in range(30)])
    tok, fingerprint = other_tokenizer(tmp_path / "sp")
    pre_fingerprint = load_tokenizer(str(pre / "tokenizer")).fingerprint
    cases = [
        ((no_chosen,), "has no 'chosen' field (it has 'prompt', 'rejected'); each row needs 'chosen' and 'rejected'"),
        ((no_rejected,), "has no 'rejected' field (it has 'chosen', 'prompt'); each row needs 'chosen' and 'rejected'"),
        # chosen: 300 + the template's suffix and EOS (8) tokens, rejected 1 + 8: 317 positions with a one-token prompt
        ((one_too_long, "--config.data.bad_input=fail"), "leaves no room for the answer at data.seq_len=256 (chosen 308 + rejected 9 "
                                                         "tokens take 317 positions even with a one-token prompt); raise data.seq_len to at least 317"),
        ((all_too_long,), ("the train split of data.path=", "has no usable preference pairs (read ", "kept 0,", "raise data.seq_len")),
        ((manifest, "--config.dpo.loss=simpo", "--config.dpo.reference=precompute"),
         "dpo.loss=simpo has no reference policy but dpo.reference=precompute; set dpo.reference=none (or auto)"),
        ((manifest, "--config.dpo.loss=simpo", "--config.dpo.reference=adapters_off"),
         "dpo.loss=simpo has no reference policy but dpo.reference=adapters_off; set dpo.reference=none (or auto)"),
        ((manifest, "--config.dpo.beta=0"), "dpo.beta=0.0 must be a finite number above 0"),
        ((manifest, "--config.dpo.beta=-1"), "dpo.beta=-1.0 must be a finite number above 0"),
        ((manifest, "--config.dpo.bta=0.1"), "unknown config key 'dpo.bta'; did you mean dpo.beta"),
        # another tokenizer than the start weights': the existing run's config differs, so it is refused first ...
        ((*full_runs[3], f"--config.data.tokenizer={tok}"), f"holds a run with a different config (data.tokenizer: '{pre / 'tokenizer'}' -> '{tok}');"),
    ]
    commands = [dpo("configs/dpo_full_tiny.py", existing, data, pre, *extra) for (data, *extra), _ in cases]
    # ... and in a new workdir the start refuses weights trained with another tokenizer
    fresh = tmp_path / "fresh"
    commands.append(dpo("configs/dpo_full_tiny.py", fresh, manifest, pre, f"--config.data.tokenizer={tok}"))
    cases.append(((manifest,), f"checkpoint.init_from={str(pre)!r} was trained with tokenizer {pre_fingerprint[:12]}, but this run's "
                      f"data.tokenizer={str(tok)!r} is {fingerprint[:12]}; use its tokenizer, or set checkpoint.allow_tokenizer_mismatch=true"))
    for (code, err), ((_, *extra), message) in zip(llm_session(*commands), cases):
        errors = [line for line in err.splitlines() if "error:" in line]
        messages = (message,) if isinstance(message, str) else message
        assert code == 2 and len(errors) == 1 and all(m in errors[0] for m in messages), (extra, err[-2000:])
        assert "Traceback" not in err
    assert snapshot(existing) == before
    assert not (fresh / "checkpoints").exists() or not any((fresh / "checkpoints").iterdir())
