"""`llm rm score` (llm.finetune.reward_score, llm.cli.rm_score): rows are tokenized as the reward
model's training pairs, padded and bucketed batches score each sequence as it scores alone,
results come back in input order, and bad input is one line with nothing written."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_close_at_scale
from interop_models import build_hf_model, single_device_rules, train_tokenizer
from llm.checkpoint.params_io import save_params
from llm.cli.rm_score import add_score_parser, run_score
from llm.config.base import base_config
from llm.data.pairs import encode_prompt_answer
from llm.errors import UserError
from llm.finetune.reward import segment_rewards
from llm.finetune.reward_score import RewardScorer
from llm.interop.hf_import import load_hf_checkpoint
from llm.interop.hf_reward import REWARD_HEAD_FILE, write_head_file

ROWS = [
    {"prompt": "What does json.dumps return?", "completion": " A string."},
    {"text": "import json\nprint(json.dumps({'a': [1, 2, 3]}, indent=2, sort_keys=True))"},
    {"prompt": "Name a decoder.", "response": " JSONDecoder, in json.decoder."},
    {"prompt": [{"role": "user", "content": "Why?"}], "chosen": [{"role": "assistant", "content": "Because."}]},
    {"prompt": "Is JSON a subset of Python? Not quite; explain the literals that differ.", "completion": " true, false and null."},
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> tuple[Path, object, object, np.ndarray]:
    """An `llm rm`-like workdir: merged/ = a random tiny Llama (max_seq_len 128) + reward head."""
    root = tmp_path_factory.mktemp("rm")
    tok = train_tokenizer(root / "tok")
    build_hf_model("llama", root / "src", seed=4, tokenizer_dir=tok)
    config, graphdef, params = load_hf_checkpoint(root / "src", single_device_rules(base_config()))
    save_params(root / "run" / "merged", params, config, tokenizer_dir=tok)
    kernel = np.random.default_rng(0).normal(0.0, 0.5, (config.model.d_model, 1)).astype(np.float32)
    write_head_file(root / "run" / "merged", kernel)
    return root / "run", graphdef, params, kernel


@pytest.fixture(scope="module")
def scorer(run_dir) -> RewardScorer:
    return RewardScorer(run_dir[0], devices=jax.devices()[:1])


def test_rows_are_tokenized_as_training_pairs(scorer):
    tok, config = scorer.tokenizer, scorer.config
    for i, row in enumerate(ROWS):
        if "text" in row:
            continue
        answer = next(row[k] for k in ("completion", "response", "chosen") if k in row)
        prompt_ids, answer_ids = encode_prompt_answer(tok, config, row["prompt"], answer)
        np.testing.assert_array_equal(scorer.encode(row, "row"), np.concatenate([prompt_ids, answer_ids]), err_msg=str(i))
    text = ROWS[1]["text"]
    # BOS only where the tokenizer adds one (start-up from HF: this BPE tokenizer's post-processor adds none).
    bos = [tok.bos_id] if config.data.add_bos else []
    np.testing.assert_array_equal(scorer.encode(ROWS[1], "row"), [*bos, *tok.encode(text), tok.eos_id])
    # The chat template renders string prompts (data.strings_as_chat=true): not the plain text.
    plain = scorer.encode({"text": ROWS[0]["prompt"] + ROWS[0]["completion"]}, "row")
    assert not np.array_equal(scorer.encode(ROWS[0], "row"), plain)


def test_batched_scores_equal_each_sequence_alone(scorer, run_dir):
    _, graphdef, params, kernel = run_dir
    sequences = [scorer.encode(r, "row") for r in ROWS]
    assert len({len(s) for s in sequences}) == len(ROWS)
    batched = scorer.score(sequences, batch_size=2)  # longest first, 3 batches, padded to buckets

    @jax.jit
    def alone(params, tokens):
        n = tokens.shape[1]
        batch = {"inputs": tokens, "positions": jnp.arange(n)[None], "segment_ids": jnp.ones((1, n), jnp.int32),
                 "loss_mask": jnp.zeros((1, n)).at[0, -1].set(1.0)}
        return segment_rewards(graphdef, params, {"kernel": jnp.asarray(kernel)}, batch, 1)[0, 0]

    expected = np.array([float(alone(params, jnp.asarray(s)[None])) for s in sequences])
    assert_close_at_scale(batched, expected)
    assert np.abs(expected).max() > 0.1 and len(set(np.round(expected, 3))) == len(ROWS)


@pytest.mark.parametrize("row, message", [
    ([1, 2], "row 7 is a list; each row must be a JSON object"),
    ({"prompt": "x"}, "row 7 has 'prompt'; each row needs 'prompt' and one of 'completion', 'response', 'chosen', or 'text'"),
    ({"completion": "x"}, "needs 'prompt' and one of"),
    ({"prompt": "x", "completion": 3}, "row 7: 'completion' is a int; give a string or a message list"),
    ({"text": ""}, "row 7: 'text' must be a non-empty string"),
    ({"text": "x" * 400}, r"row 7 has \d+ tokens, more than the model's max_seq_len=128; shorten it"),
])
def test_bad_rows(scorer, row, message):
    with pytest.raises(UserError, match=message):
        scorer.encode(row, "row 7")


def test_workdir_without_a_reward_model(tmp_path, run_dir):
    with pytest.raises(UserError, match="does not exist"):
        RewardScorer(tmp_path / "missing")
    with pytest.raises(UserError, match="has no merged/ reward model; let its `llm rm` run finish"):
        RewardScorer(tmp_path)
    lm = tmp_path / "lm"
    (lm / "merged").mkdir(parents=True)
    for item in ("params", "config.json"):
        (lm / "merged" / item).symlink_to(run_dir[0] / "merged" / item)
    with pytest.raises(UserError, match=f"has no {REWARD_HEAD_FILE}, so it is not a reward model"):
        RewardScorer(lm)


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_score_parser(parser.add_subparsers())
    args = parser.parse_args(["score", *argv])
    args.config_overrides = []
    return run_score(args)


def test_cli_writes_one_reward_per_row_in_order(tmp_path, run_dir, scorer, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    out = tmp_path / "scores.jsonl"
    assert _cli("--workdir", str(run_dir[0]), "--input", str(rows), "--output", str(out), "--batch-size", "3") == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(len(ROWS)))
    expected = scorer.score_rows(ROWS)
    assert_close_at_scale([line["reward"] for line in lines], expected)
    assert f"scored {len(ROWS)} rows" in capsys.readouterr().err

    assert _cli("--workdir", str(run_dir[0]), "--input", str(rows)) == 0  # no --output: stdout
    assert [json.loads(line)["index"] for line in capsys.readouterr().out.splitlines()] == list(range(len(ROWS)))

    # A bad row anywhere: one line naming it, and the previous scores are left as they were.
    before = out.read_text()
    rows.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"prompt": "x", "answer": "y"}) + "\n")
    with pytest.raises(UserError, match="--input line 2 has 'answer', 'prompt'; each row needs"):
        _cli("--workdir", str(run_dir[0]), "--input", str(rows), "--output", str(out))
    rows.write_text("{not json\n")
    with pytest.raises(UserError, match="line 1 of .* is not JSON"):
        _cli("--workdir", str(run_dir[0]), "--input", str(rows), "--output", str(out))
    with pytest.raises(UserError, match="--batch-size=0 must be at least 1"):
        _cli("--workdir", str(run_dir[0]), "--input", str(rows), "--batch-size", "0")
    assert out.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl", "scores.jsonl"]


@pytest.mark.slow
def test_a_trained_reward_model_scores_exports_and_reexports_as_it_trained(tmp_path):
    """`llm rm` (2 steps from a transformers Llama) -> `llm rm score` reads the held-out pairs'
    rewards the training reported; `llm export` keeps the head; `llm convert to-hf --workdir`
    gives a sequence classifier that transformers scores identically."""
    import torch
    import transformers

    from llm.checkpoint.export import export_workdir
    from llm.config.loading import load_config
    from llm.data.pairs import load_pairs
    from llm.finetune.reward import run_reward
    from llm.finetune.start import apply_data, apply_init_from, resolve_chat_template
    from llm.interop.convert import to_hf
    from llm.interop.hf_reward import read_head_file

    pairs_in = [{"prompt": f"Is {w} JSON?", "chosen": f" {w} is.", "rejected": " No."} for w in ("a", "null", "true", "1", "[]", "{}", "x", "2.5")]
    tok = train_tokenizer(tmp_path / "tok")
    build_hf_model("llama", tmp_path / "lm", tokenizer_dir=tok)
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs_in))
    (tmp_path / "held.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs_in[::2]))
    overrides = ["train.steps=2", "train.eval_every=0", "data.seq_len=128", "train.measure_peak=false", f"data.eval_path={tmp_path / 'held.jsonl'}"]
    config = apply_init_from(load_config("configs/rm_tiny.py", overrides), str(tmp_path / "lm"), overrides)
    config = resolve_chat_template(apply_data(config, str(tmp_path / "pairs.jsonl")))
    summary = run_reward(config, tmp_path / "run")

    scorer = RewardScorer(tmp_path / "run")
    pairs, _ = load_pairs(config, "validation")
    sequences = [np.concatenate([p.prompt, p.chosen]) for p in pairs]
    encoded = {tuple(scorer.encode({"prompt": r["prompt"], "completion": r["chosen"]}, "row")) for r in pairs_in}
    assert all(tuple(s) in encoded for s in sequences)  # the rows a user writes tokenize as the training pairs
    rewards = scorer.score(sequences)
    assert_close_at_scale(rewards.mean(), summary["heldout_rewards/chosen"], scale=float(np.abs(rewards).max()))

    exported = export_workdir(tmp_path / "run", tmp_path / "export")
    np.testing.assert_array_equal(read_head_file(exported), read_head_file(tmp_path / "run" / "merged"))
    hf_dir = to_hf(None, tmp_path / "hf", workdir=tmp_path / "run")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(hf_dir, dtype=torch.float32).eval()
    length = max(len(s) for s in sequences)
    tokens = np.full((len(sequences), length), 2, np.int64)
    for r, s in enumerate(sequences):
        tokens[r, : len(s)] = s
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor((tokens != 2).astype(np.int64))).logits[:, 0].numpy()
    assert_close_at_scale(rewards, theirs, ulps=64)
