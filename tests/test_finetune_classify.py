"""Sequence classification: the head reads the last real token, batches are deterministic and
resumable, F1 is right, bad records are one-line errors, and the recipe beats the
majority-class baseline on held-out functions."""

import json

import jax
import numpy as np
import pytest

from finetune_fixtures import FAST, corpus_and_start, llm_session
from helpers import tiny_config
from llm.errors import UserError
from llm.finetune.classify import ClassificationBatches, encode_examples, head_logits, macro_f1, make_rows
from llm.model.build import init_params
from llm.model.spec import model_spec
from llm.parallel.mesh import build_mesh
from llm.parallel.rules import AxisRules


def test_rows_mark_the_last_real_token_and_padding_does_not_change_the_logits():
    tokens = [np.array([5, 6, 7], np.int32), np.array([9], np.int32)]
    labels = np.array([2, 1], np.int32)
    batch = make_rows(tokens, labels, np.array([0, 1, -1]), seq_len=6, pad_id=0)
    np.testing.assert_array_equal(batch["loss_mask"], [[0, 0, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0] * 6])
    np.testing.assert_array_equal(batch["targets"][:, :3], [[0, 0, 2], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(batch["segment_ids"][0], [1, 1, 1, 0, 0, 0])

    config = tiny_config()
    rules = AxisRules.from_config(config.mesh.rules, build_mesh(config.mesh, jax.devices()[:1]))
    graphdef, params, _ = init_params(model_spec(config, platform="cpu"), rules, 0)
    head = {"kernel": np.random.default_rng(0).normal(size=(128, 3)).astype(np.float32), "bias": np.zeros(3, np.float32)}
    short = make_rows(tokens, labels, np.array([0, 1]), seq_len=4, pad_id=0)
    long = make_rows(tokens, labels, np.array([0, 1]), seq_len=16, pad_id=3)
    logits = jax.jit(lambda b: head_logits(graphdef, params, head, b))
    (a, mask), (b, _) = logits(short), logits(long)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(mask), [1, 1])
    assert np.abs(np.asarray(a[0] - a[1])).max() > 1e-3


def test_batches_are_a_function_of_the_step_and_resume():
    tokens = [np.full(3, i, np.int32) for i in range(10)]
    labels = np.arange(10, dtype=np.int32) % 3
    make = lambda: ClassificationBatches(tokens, labels, 4, 8, 0, seed=1, train=True)  # noqa: E731
    first = next(make())
    run = make()
    batches = [next(run) for _ in range(6)]  # crosses epochs
    assert first["inputs"].tolist() == batches[0]["inputs"].tolist()
    first_epoch = [int(b["inputs"][r, 0]) for b in batches[:2] for r in range(4)] + [int(batches[2]["inputs"][r, 0]) for r in range(2)]
    assert sorted(first_epoch) == list(range(10))  # each example once per epoch
    resumed = make()
    resumed.set_state(run.get_state())
    assert next(resumed)["inputs"].tolist() == next(run)["inputs"].tolist()
    with pytest.raises(UserError, match="other classification data settings"):
        ClassificationBatches(tokens, labels, 4, 8, 0, seed=2, train=True).set_state(run.get_state())
    valid = list(ClassificationBatches(tokens, labels, 4, 8, 0, seed=1, train=False))
    assert len(valid) == 3 and valid[-1]["loss_mask"].sum() == 2  # 10 examples: the last batch is padded


def test_macro_f1_and_bad_records():
    assert macro_f1(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]), 3) == 1.0
    assert macro_f1(np.array([0, 0, 0, 0]), np.array([0, 0, 1, 1]), 2) == pytest.approx((2 / 3 + 0.0) / 2)
    config = tiny_config("data.seq_len=8")
    tokens, labels = encode_examples(config, [{"text": "abcdefghijkl", "label": 1}], 2, "train")
    assert len(tokens[0]) == 8 and labels.tolist() == [1]
    with pytest.raises(UserError, match=r"train record 1 has label 5, outside 0..1; set finetune.num_labels"):
        encode_examples(config, [{"text": "x", "label": 5}], 2, "train")
    with pytest.raises(UserError, match=r"train record 2 needs a string 'text' and an integer 'label'"):
        encode_examples(config, [{"text": "x", "label": 0}, {"label": 1}], 2, "train")


@pytest.mark.slow
def test_classification_beats_the_majority_baseline_on_held_out_functions(tmp_path_factory, tmp_path):
    """Functions held out by a hash of their text (the built-in split holds out whole modules,
    a harder task than a short test run can learn; see the classify_tiny preset)."""
    manifest, pre = corpus_and_start(tmp_path_factory)
    rows = manifest.parent / "classification" / "train.jsonl"
    workdir = tmp_path / "cls"
    [(code, err)] = llm_session([
        "classify", "--config", "configs/classify_tiny.py", "--workdir", str(workdir), "--init-from", str(pre), "--data", str(rows),
        "--config.data.eval_fraction=0.2", "--config.data.seq_len=128", "--config.train.steps=100", "--config.train.eval_every=50",
        "--config.optim.lr=1e-3", *FAST,
    ])
    assert code == 0, err[-3000:]
    cost = json.loads((workdir / "cost.json").read_text())
    print({k: cost[k] for k in ("accuracy", "macro_f1", "majority_accuracy", "eval_examples")})
    assert cost["eval_examples"] > 100
    assert cost["accuracy"] > cost["majority_accuracy"] + 0.05
    assert 0 < cost["macro_f1"] <= 1 and cost["eval_loss"] < cost["start_eval_loss"]
    assert (workdir / "merged" / "classification_head.safetensors").is_file()
