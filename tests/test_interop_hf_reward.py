"""Reward models <-> transformers' *ForSequenceClassification (num_labels=1): what `llm convert
to-hf` writes for a reward params checkpoint loads in transformers and scores texts of different
lengths in a padded batch as `llm rm score` does; a transformers reward model imports (backbone
+ score head) and scores as transformers does."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from helpers import assert_close_at_scale
from interop_models import build_hf_model, single_device_rules, train_tokenizer
from llm.checkpoint.params_io import save_params
from llm.config.base import base_config
from llm.errors import UserError
from llm.finetune.reward_score import RewardScorer
from llm.interop.convert import from_hf, to_hf
from llm.interop.hf_export import export_hf
from llm.interop.hf_import import load_hf_checkpoint
from llm.interop.hf_reward import REWARD_HEAD_FILE, read_head_file, read_reward_head, write_head_file

F32 = ("precision.compute=float32",)
ROWS = [  # different lengths: the padded batch has rows of 3 lengths
    {"prompt": "What does json.dumps return?", "completion": " A string holding the JSON text of the object."},
    {"prompt": "Name a decoder.", "completion": " JSONDecoder."},
    {"text": "def load(fp):\n    return loads(fp.read())"},
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tok"))


def _hf_rewards(model, sequences: list[np.ndarray], pad_id: int) -> np.ndarray:
    """transformers' rewards for right-padded rows, as a user batches them (attention mask only)."""
    import torch

    length = max(len(s) for s in sequences)
    tokens = np.full((len(sequences), length), pad_id, np.int64)
    mask = np.zeros_like(tokens)
    for r, s in enumerate(sequences):
        tokens[r, : len(s)], mask[r, : len(s)] = s, 1
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits
    assert logits.shape == (len(sequences), 1)
    return logits[:, 0].float().numpy()


def _load_classifier(directory: Path):
    import torch
    import transformers

    return transformers.AutoModelForSequenceClassification.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="eager").eval()


def _reward_checkpoint(tmp_path: Path, family: str, tokenizer_dir: Path, seed: int) -> tuple[Path, np.ndarray]:
    """A reward params checkpoint (what `llm rm` leaves in merged/): a random `family` backbone and head."""
    src = tmp_path / "src"
    build_hf_model(family, src, seed=seed, tokenizer_dir=tokenizer_dir)
    config, _, params = load_hf_checkpoint(src, single_device_rules(base_config()), overrides=F32)
    merged = tmp_path / "merged"
    save_params(merged, params, config, tokenizer_dir=tokenizer_dir)
    kernel = np.random.default_rng(seed).normal(0.0, 0.5, (config.model.d_model, 1)).astype(np.float32)
    write_head_file(merged, kernel)
    return merged, kernel


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])  # untied head dropped; tied + q/k/v biases; GPT-2 names
def test_export_is_a_sequence_classifier_that_scores_like_llm_rm_score(tmp_path, tokenizer_dir, family):
    merged, kernel = _reward_checkpoint(tmp_path, family, tokenizer_dir, seed=3)
    out = to_hf(merged, tmp_path / "hf")
    hf = json.loads((out / "config.json").read_text())
    assert hf["architectures"] == [{"llama": "LlamaForSequenceClassification", "qwen2": "Qwen2ForSequenceClassification",
                                    "gpt2": "GPT2ForSequenceClassification"}[family]]
    assert (hf["pad_token_id"], len(hf["id2label"])) == (2, 1)  # the tokenizer's pad; num_labels=1
    tensors = load_file(out / "model.safetensors")
    assert "lm_head.weight" not in tensors
    np.testing.assert_array_equal(tensors["score.weight"], kernel.T)
    assert (out / "tokenizer.json").read_bytes() == (tokenizer_dir / "tokenizer.json").read_bytes()

    scorer = RewardScorer(merged, devices=jax.devices()[:1])
    sequences = [scorer.encode(r, f"row {i}") for i, r in enumerate(ROWS)]
    assert len({len(s) for s in sequences}) == 3
    ours = scorer.score(sequences, batch_size=2)
    theirs = _hf_rewards(_load_classifier(out), sequences, pad_id=2)
    assert_close_at_scale(ours, theirs, ulps=64, err_msg=family)
    assert np.abs(theirs).max() > 0.1  # not a comparison of near-zero rewards


def test_transformers_reward_model_imports_with_its_score_head(tmp_path, tokenizer_dir):
    """An HF LlamaForSequenceClassification (untied config, no lm_head): `llm convert from-hf` keeps
    the backbone and the score head, and the imported model scores as transformers does."""
    import torch
    import transformers

    from interop_models import hf_config

    config = hf_config("llama")
    config.num_labels = 1
    torch.manual_seed(5)
    model = transformers.LlamaForSequenceClassification(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.08 * torch.randn_like(p))
    src = tmp_path / "rm"
    model.save_pretrained(src)
    for f in tokenizer_dir.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    assert "lm_head.weight" not in load_file(src / "model.safetensors")

    kernel = read_reward_head(src)
    np.testing.assert_array_equal(kernel, model.score.weight.detach().numpy().T)
    assert kernel.shape == (64, 1) and kernel.dtype == np.float32
    from helpers import tiny_config
    from llm.finetune.start import apply_init_from

    started = apply_init_from(tiny_config(), str(src))  # `--init-from` takes it as a Hugging Face start
    assert (started.checkpoint.init_from_hf, started.model.d_model, started.model.tie_embeddings) == (str(src), 64, True)
    imported = from_hf(src, tmp_path / "ckpt", overrides=F32, rules=single_device_rules(base_config()))
    assert imported.config.model.tie_embeddings  # no LM head to import: tied to the embedding
    np.testing.assert_array_equal(read_head_file(tmp_path / "ckpt"), kernel)

    scorer = RewardScorer(tmp_path / "ckpt", devices=jax.devices()[:1])  # a reward params checkpoint scores directly
    sequences = [scorer.encode(r, f"row {i}") for i, r in enumerate(ROWS)]
    assert_close_at_scale(scorer.score(sequences, batch_size=4), _hf_rewards(model, sequences, pad_id=2), ulps=64)


def test_read_reward_head_of_other_models(tmp_path, tokenizer_dir):
    import transformers

    from interop_models import hf_config

    lm = tmp_path / "lm"
    build_hf_model("llama", lm)
    assert read_reward_head(lm) is None  # a causal LM has no score head
    config = hf_config("llama")
    config.num_labels = 3
    transformers.LlamaForSequenceClassification(config).save_pretrained(tmp_path / "cls")
    with pytest.raises(UserError, match="num_labels=3; a reward model has num_labels=1"):
        read_reward_head(tmp_path / "cls")


def test_export_needs_a_pad_token_and_a_matching_head(tmp_path):
    src = tmp_path / "src"
    build_hf_model("llama", src)  # no tokenizer: the export knows no pad id
    config, _, params = load_hf_checkpoint(src, single_device_rules(base_config()))
    kernel = np.zeros((64, 1), np.float32)
    with pytest.raises(UserError, match="pass --pad-token-id"):
        export_hf(config, params, tmp_path / "a", reward_head=kernel)
    out = export_hf(config, params, tmp_path / "b", reward_head=kernel, pad_token_id=7)
    assert json.loads((out / "config.json").read_text())["pad_token_id"] == 7
    with pytest.raises(UserError, match=r"shape \(32, 1\), expected \(64, 1\)"):
        export_hf(config, params, tmp_path / "c", reward_head=np.zeros((32, 1), np.float32), pad_token_id=7)
    merged = tmp_path / "plain"
    save_params(merged, params, config)
    with pytest.raises(UserError, match="--pad-token-id is for reward models"):
        to_hf(merged, tmp_path / "d", pad_token_id=7)
    (merged / REWARD_HEAD_FILE).write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot be read"):
        to_hf(merged, tmp_path / "e")
