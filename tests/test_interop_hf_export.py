"""Export parity: transformers loads what llm.interop.hf_export writes, its logits equal the
original model's, greedy generation is token-identical, and the tensors round-trip bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from interop_models import (
    FAMILIES, VOCAB, build_hf_model, hf_greedy, hf_logits, our_greedy, padded_batch, single_device_rules,
    train_tokenizer,
)
from llm.config.base import base_config
from llm.errors import UserError
from llm.interop.hf_export import export_hf, parse_size
from llm.interop.hf_import import load_hf_checkpoint

F32 = ("precision.compute=float32",)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory, tokenizer_dir):
    out = {}
    for i, family in enumerate(FAMILIES):
        directory = tmp_path_factory.mktemp(family)
        out[family] = (directory, build_hf_model(family, directory, seed=10 + i, tokenizer_dir=tokenizer_dir))
    return out


def _load(directory):
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager").eval()


def _tensors(directory: Path) -> dict:
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_export_loads_in_transformers_with_identical_logits_and_generation(tmp_path, hf_models, family):
    src, original = hf_models[family]
    config, graphdef, params = load_hf_checkpoint(src, single_device_rules(base_config()), overrides=F32)
    source = json.loads((src / "config.json").read_text())  # what `llm convert from-hf` keeps
    out = export_hf(config, params, tmp_path / "export", tokenizer_dir=src, source_hf_config=source)
    exported = _load(out)
    assert type(exported) is type(original)
    tokens, mask = padded_batch(seed=7)
    diff = np.abs(hf_logits(exported, tokens, mask) - hf_logits(original, tokens, mask))[mask.astype(bool)]
    assert diff.max() <= 1e-5, f"{family}: {diff.max()}"
    prompt = [5, 17, 42, 99, 7]
    expected = hf_greedy(original, prompt, 20)
    assert len(expected) == 20
    assert hf_greedy(exported, prompt, 20) == expected
    assert our_greedy(graphdef, params, prompt, 20) == expected  # our model decodes the same tokens
    # The weights themselves round-trip bit for bit (the vocab padding is sliced off again).
    before, after = _tensors(src), _tensors(out)
    assert set(after) == set(before)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)


def test_export_config_fields(tmp_path, hf_models):
    src = hf_models["llama31"][0]
    config, _, params = load_hf_checkpoint(src, single_device_rules(base_config()))
    out = export_hf(config, params, tmp_path / "e", tokenizer_dir=src)
    hf = json.loads((out / "config.json").read_text())
    assert hf["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 64}
    assert (hf["rope_theta"], hf["vocab_size"], hf["num_key_value_heads"], hf["tie_word_embeddings"]) == (500000.0, VOCAB, 2, False)
    # Token ids come from the exported tokenizer, whose files travel with the weights.
    assert (hf["bos_token_id"], hf["eos_token_id"], hf["pad_token_id"]) == (0, 1, 2)
    assert (out / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    assert (out / "chat_template.jinja").exists()


def test_export_model_type_follows_the_source_config(tmp_path, hf_models):
    src = hf_models["llama"][0]
    config, _, params = load_hf_checkpoint(src, single_device_rules(base_config()))
    plain = export_hf(config, params, tmp_path / "plain")
    assert json.loads((plain / "config.json").read_text())["model_type"] == "llama"
    kept = export_hf(config, params, tmp_path / "kept", source_hf_config={"model_type": "mistral"})
    assert json.loads((kept / "config.json").read_text())["model_type"] == "mistral"  # no window: Mistral is Llama
    with pytest.raises(UserError, match="cannot be exported as 'qwen2': q/k/v biases differ"):
        export_hf(config, params, tmp_path / "bad", model_type="qwen2")
    windowed, _, params = load_hf_checkpoint(hf_models["mistral_window"][0], single_device_rules(base_config()))
    out = export_hf(windowed, params, tmp_path / "windowed", source_hf_config={"model_type": "llama"})
    assert json.loads((out / "config.json").read_text())["model_type"] == "mistral"  # Llama cannot express a window


def test_export_scanned_params_and_shards(tmp_path, hf_models):
    src, original = hf_models["gpt2"]
    config, _, params = load_hf_checkpoint(src, single_device_rules(base_config()), overrides=("model.scan_layers=true",))
    out = export_hf(config, params, tmp_path / "e", max_shard_bytes=parse_size("100KB"))
    files = sorted(out.glob("*.safetensors"))
    assert len(files) > 2 and files[0].name == f"model-00001-of-{len(files):05d}.safetensors"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(_tensors(src)) and set(index["weight_map"].values()) == {f.name for f in files}
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in _tensors(src).values())
    before, after = _tensors(src), _tensors(out)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)
    tokens, mask = padded_batch(seed=8)
    diff = np.abs(hf_logits(_load(out), tokens, mask) - hf_logits(original, tokens, mask))[mask.astype(bool)]
    assert diff.max() <= 1e-5


def test_export_bfloat16(tmp_path, hf_models):
    src = hf_models["qwen2"][0]
    config, _, params = load_hf_checkpoint(src, single_device_rules(base_config()))
    out = export_hf(config, params, tmp_path / "e", dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(out / "model.safetensors", framework="np") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
        got = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
    want = _tensors(src)["model.layers.0.self_attn.q_proj.weight"].astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(got, want)


def test_export_refuses_a_non_empty_directory(tmp_path, hf_models):
    config, _, params = load_hf_checkpoint(hf_models["llama"][0], single_device_rules(base_config()))
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "something").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        export_hf(config, params, tmp_path / "e")


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size("1234") == 1234
    with pytest.raises(UserError, match="cannot parse"):
        parse_size("lots")
