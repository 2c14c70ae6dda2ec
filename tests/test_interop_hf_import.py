"""Import parity: a transformers model's logits == ours after llm.interop.hf_import, per family,
on a batch with left and right padding, in both layer layouts and on a sharded mesh."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from interop_models import (
    FAMILIES, VOCAB, build_hf_model, hf_logits, our_logits, padded_batch, single_device_rules, train_tokenizer,
)
from llm.config.base import base_config
from llm.errors import UserError
from llm.interop.hf_import import load_hf_checkpoint
from llm.model.build import abstract_model, param_shardings
from llm.model.spec import model_spec
from llm.parallel.mesh import build_mesh
from llm.parallel.rules import AxisRules

F32 = ("precision.compute=float32",)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory, tokenizer_dir):
    """family -> (directory, transformers model)."""
    out = {}
    for i, family in enumerate(FAMILIES):
        directory = tmp_path_factory.mktemp(family)
        out[family] = (directory, build_hf_model(family, directory, seed=i, tokenizer_dir=tokenizer_dir))
    return out


def _real(mask: np.ndarray) -> np.ndarray:
    return mask.astype(bool)


@pytest.mark.parametrize("family", FAMILIES)
def test_import_logits_match_transformers(hf_models, family):
    directory, model = hf_models[family]
    config, graphdef, params = load_hf_checkpoint(directory, single_device_rules(base_config()), overrides=F32)
    tokens, mask = padded_batch(seed=1)
    ours = our_logits(graphdef, params, tokens, mask)
    ref = hf_logits(model, tokens, mask)
    assert ours.shape[-1] == 384 and config.model.vocab_size == VOCAB  # padded vocabulary
    assert np.all(ours[..., VOCAB:] <= -1e29)  # padding columns can never be predicted
    diff = np.abs(ours[..., :VOCAB] - ref)[_real(mask)]
    assert diff.max() <= 1e-4, f"{family}: max abs diff {diff.max()}"
    assert np.abs(ref).max() > 1.0  # the comparison is not between near-zero logits


def test_import_maps_architecture_fields(hf_models):
    config, _, params = load_hf_checkpoint(hf_models["llama31"][0], single_device_rules(base_config()))
    m = config.model
    assert (m.family, m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.d_ff, m.max_seq_len) == ("llama", 64, 2, 4, 2, 128, 128)
    assert m.norm_eps == 1e-6
    assert (m.rope_theta, m.rope_scaling.type, m.rope_scaling.factor, m.rope_scaling.original_max_position) == (500000.0, "llama3", 8.0, 64)
    assert params["head"].shape == (64, 384) and params["embed"].shape == (384, 64)
    np.testing.assert_array_equal(np.asarray(params["embed"])[VOCAB:], 0.0)
    config, _, params = load_hf_checkpoint(hf_models["qwen2"][0], single_device_rules(base_config()))
    assert config.model.qkv_bias and config.model.tie_embeddings and "head" not in params
    assert params["blocks"][0]["attn"]["q"]["bias"].shape == (4, 16)
    config, _, params = load_hf_checkpoint(hf_models["llama_tied"][0], single_device_rules(base_config()))
    assert config.model.head_dim == 32 and params["blocks"][1]["attn"]["o"]["kernel"].shape == (4, 32, 64)


def test_import_points_data_tokenizer_at_the_model_directory(hf_models):
    directory = hf_models["llama"][0]
    config, _, _ = load_hf_checkpoint(directory, single_device_rules(base_config()))
    assert config.data.tokenizer == str(directory.absolute())


def test_import_keeps_base_sections_and_applies_overrides(hf_models):
    base = base_config()
    base.train.steps = 7
    base.model.remat = "full"
    config, _, params = load_hf_checkpoint(
        hf_models["gpt2"][0], single_device_rules(base), base=base, overrides=("precision.params=bfloat16",)
    )
    assert config.train.steps == 7 and config.model.remat == "full" and config.model.family == "gpt2"
    assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {np.dtype("bfloat16")}


@pytest.mark.parametrize("family", ["llama", "gpt2", "mistral_window", "gemma3", "blocked:gemma2"])
def test_import_scan_layers_stacks_the_same_weights(hf_models, family):
    """Scanned layers, including windowed ones and Gemma's mixed local / global layers (each
    layer picks its mask and RoPE tables inside the scan), and the blocked attention path."""
    blocked = family.startswith("blocked:")
    family = family.removeprefix("blocked:")
    extra = ("model.attention_impl=blocked", "model.attention_block=4") if blocked else ()
    directory, model = hf_models[family]
    rules = single_device_rules(base_config())
    _, g_flat, flat = load_hf_checkpoint(directory, rules, overrides=F32)
    config, g_scan, scanned = load_hf_checkpoint(directory, rules, overrides=(*F32, "model.scan_layers=true", *extra))
    assert config.model.scan_layers
    q = np.asarray(scanned["blocks"]["attn"]["q"]["kernel"])
    assert q.shape[0] == config.model.n_layers
    for i in range(config.model.n_layers):
        np.testing.assert_array_equal(q[i], np.asarray(flat["blocks"][i]["attn"]["q"]["kernel"]))
    tokens, mask = padded_batch(seed=2)
    ref = hf_logits(model, tokens, mask)
    diff = np.abs(our_logits(g_scan, scanned, tokens, mask)[..., :VOCAB] - ref)[_real(mask)]
    assert diff.max() <= 1e-4


def test_import_places_each_param_with_its_sharding(hf_models):
    """On a data=1 x fsdp=4 x tensor=2 mesh every leaf has the model's target sharding."""
    assert jax.device_count() >= 8, "tests/conftest.py provides 8 CPU devices"
    directory, model = hf_models["qwen2"]
    base = base_config()
    base.mesh.data, base.mesh.fsdp, base.mesh.tensor = 1, 4, 2
    rules = AxisRules.from_config(base.mesh.rules, build_mesh(base.mesh, devices=jax.devices()[:8]))
    config, graphdef, params = load_hf_checkpoint(directory, rules, base=base, overrides=F32)
    spec = model_spec(config, vocab_shards=rules.shards("vocab"))
    expected = param_shardings(abstract_model(spec, rules)[1], spec, rules)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(expected)
    for x, e in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(expected)):
        assert x.sharding.is_equivalent_to(e, x.ndim), (x.sharding, e)
    q = params["blocks"][0]["attn"]["q"]["kernel"]
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (16, 2, 16)
    tokens, mask = padded_batch(seed=3)
    diff = np.abs(our_logits(graphdef, params, tokens, mask)[..., :VOCAB] - hf_logits(model, tokens, mask))[_real(mask)]
    assert diff.max() <= 1e-4


def test_import_reads_sharded_safetensors_with_an_index(tmp_path):
    import torch  # noqa: F401 - transformers needs it

    model = build_hf_model("llama", seed=5)
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists() and len(list(tmp_path.glob("*.safetensors"))) > 2
    _, graphdef, params = load_hf_checkpoint(tmp_path, single_device_rules(base_config()), overrides=F32)
    tokens, mask = padded_batch(seed=4)
    diff = np.abs(our_logits(graphdef, params, tokens, mask)[..., :VOCAB] - hf_logits(model, tokens, mask))[_real(mask)]
    assert diff.max() <= 1e-4


def test_import_accepts_bare_gpt2_names_and_buffers(tmp_path, hf_models):
    """Original GPT-2 checkpoints have no `transformer.` prefix and carry attn.bias buffers."""
    src, model = hf_models["gpt2"]
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(src / "model.safetensors").items()}
    tensors["h.0.attn.bias"] = np.tril(np.ones((1, 1, 128, 128), np.float32))
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    _, graphdef, params = load_hf_checkpoint(tmp_path, single_device_rules(base_config()), overrides=F32)
    tokens, mask = padded_batch(seed=5)
    diff = np.abs(our_logits(graphdef, params, tokens, mask)[..., :VOCAB] - hf_logits(model, tokens, mask))[_real(mask)]
    assert diff.max() <= 1e-4


def _copy_with(src: Path, dst: Path, edit) -> Path:
    tensors = load_file(src / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    (dst / "config.json").write_text((src / "config.json").read_text())
    return dst


def test_import_refuses_missing_unused_and_misshapen_tensors(tmp_path, hf_models):
    src = hf_models["llama"][0]
    rules = single_device_rules(base_config())
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "c").mkdir()
    missing = _copy_with(src, tmp_path / "a", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(UserError, match="model.layers.1.mlp.up_proj.weight"):
        load_hf_checkpoint(missing, rules)
    extra = _copy_with(src, tmp_path / "b", lambda t: t.update({"model.layers.0.self_attn.o_proj.bias": np.zeros(64, np.float32)}))
    with pytest.raises(UserError, match="o_proj.bias"):
        load_hf_checkpoint(extra, rules)
    bad = _copy_with(src, tmp_path / "c", lambda t: t.update({"model.norm.weight": np.zeros(65, np.float32)}))
    with pytest.raises(UserError, match=r"model.norm.weight.*\(65,\)"):
        load_hf_checkpoint(bad, rules)


def test_import_refuses_pytorch_bin_weights(tmp_path, hf_models):
    (tmp_path / "config.json").write_text((hf_models["llama"][0] / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(UserError, match=r"pytorch_model.bin.*not safetensors"):
        load_hf_checkpoint(tmp_path, single_device_rules(base_config()))


def test_import_refuses_an_unsupported_config_before_reading_weights(tmp_path, hf_models):
    src = hf_models["mistral"][0]
    config = json.loads((src / "config.json").read_text())
    (tmp_path / "model.safetensors").symlink_to(src / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({**config, "attn_logit_softcapping": 50.0}))
    with pytest.raises(UserError, match="attn_logit_softcapping=50.0 is not supported: mistral has no"):
        load_hf_checkpoint(tmp_path, single_device_rules(base_config()))
