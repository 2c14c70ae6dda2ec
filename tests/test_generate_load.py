"""llm.generate.load: the checkpoint's config with overrides, and the tokenizer checks."""

from __future__ import annotations

import json

import pytest

from llm.checkpoint.params_io import CONFIG_FILE, config_to_json
from llm.config.base import base_config
from llm.data.tokenizer import ByteTokenizer
from llm.errors import UserError
from llm.generate.load import checkpoint_config, checkpoint_tokenizer


def write_config(directory, **model):
    c = base_config()
    for key, value in model.items():
        c.model[key] = value
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(config_to_json(c))
    return c


def test_overrides_apply_to_the_stored_config(tmp_path):
    write_config(tmp_path, vocab_size=300)
    config = checkpoint_config(tmp_path, ["mesh.tensor=2", "precision.compute=bfloat16"])
    assert config.model.vocab_size == 300 and config.mesh.tensor == 2 and config.precision.compute == "bfloat16"
    with pytest.raises(UserError, match="unknown config key 'mesh.tensr'"):
        checkpoint_config(tmp_path, ["mesh.tensr=2"])
    # The tokenizer belongs to the checkpoint (generation, reward scoring): another one would be ignored.
    with pytest.raises(UserError, match="the tokenizer comes with the checkpoint"):
        checkpoint_config(tmp_path, ["data.tokenizer=/elsewhere/tokenizer"])


def test_byte_models_need_no_tokenizer_directory(tmp_path):
    config = write_config(tmp_path)
    assert isinstance(checkpoint_tokenizer(tmp_path, config), ByteTokenizer)


def test_a_sentencepiece_model_without_its_tokenizer_is_an_error(tmp_path):
    config = write_config(tmp_path, vocab_size=8000)
    config.data.tokenizer = "/somewhere/tokenizer.model"
    with pytest.raises(UserError, match="has no tokenizer/ directory"):
        checkpoint_tokenizer(tmp_path, config)


def test_a_tokenizer_larger_than_the_model_is_refused(tmp_path):
    config = write_config(tmp_path, vocab_size=128)
    ByteTokenizer().save(tmp_path / "tokenizer")
    with pytest.raises(UserError, match="tokenizer has 256 tokens but the model only 128"):
        checkpoint_tokenizer(tmp_path, config)


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        checkpoint_config(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="config.json"):
        checkpoint_config(tmp_path / "empty")


def test_generate_imports_a_hugging_face_directory(tmp_path):
    """`--checkpoint HF_DIR` imports it on the fly: the completions equal those of the same model
    converted first with `llm convert from-hf` (it used to fail on config key 'architectures')."""
    from finetune_fixtures import llm_session
    from interop_models import build_hf_model, train_tokenizer

    hf = tmp_path / "hf"
    build_hf_model("llama", hf, tokenizer_dir=train_tokenizer(tmp_path / "tok"))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "def parse(text):"}\n{"prompt": "import"}\n')

    def generate(source, out):
        return ["generate", "--checkpoint", str(source), "--input", str(prompts), "--output", str(out),
                "--max-new-tokens", "6", "--no-eos-stop"]

    results = llm_session(generate(hf, tmp_path / "a.jsonl"), ["convert", "from-hf", "--src", str(hf), "--out", str(tmp_path / "conv")],
                          generate(tmp_path / "conv", tmp_path / "b.jsonl"))
    assert [code for code, _ in results] == [0, 0, 0], results[0][1][-2000:]
    direct, converted = ([json.loads(line) for line in (tmp_path / f).read_text().splitlines()] for f in ("a.jsonl", "b.jsonl"))
    assert len(direct) == 2 and [(r["tokens"], r["completion"]) for r in direct] == [(r["tokens"], r["completion"]) for r in converted]
