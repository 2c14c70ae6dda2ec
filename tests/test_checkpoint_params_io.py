"""Params-only checkpoints: lossless round trip, direct sharded restore, dtype on save, tokenizer
files, and one-line errors for missing, truncated or mismatched directories."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from llm.checkpoint.params_io import (
    CONFIG_FILE, PARAMS_DIR, TOKENIZER_DIR, config_from_json, config_to_json, load_config_json, load_params,
    save_params,
)
from llm.config.base import base_config
from llm.errors import UserError
from llm.model.build import abstract_model, param_shardings
from llm.model.spec import model_spec
from llm.parallel.mesh import build_mesh
from llm.parallel.rules import AxisRules


def _model(devices=None, mesh=(-1, 1, 1), **model):
    """(config, random params placed with the model's shardings, those shardings)."""
    config = base_config()
    config.model.d_model, config.model.d_ff, config.model.n_layers = 32, 64, 2
    config.model.max_seq_len = 64
    config.data.seq_len = 64
    for k, v in model.items():
        config.model[k] = v
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
    config.mesh.rules.vocab = ("tensor", "fsdp")  # a non-default rule survives the JSON round trip
    rules = AxisRules.from_config(config.mesh.rules, build_mesh(config.mesh, devices=devices or jax.devices()[:1]))
    spec = model_spec(config, vocab_shards=rules.shards("vocab"))
    _, abstract = abstract_model(spec, rules)
    shardings = param_shardings(abstract, spec, rules)
    rng = np.random.default_rng(3)
    params = jax.tree_util.tree_map(
        lambda s, sh: jax.device_put(rng.standard_normal(s.shape).astype(s.dtype), sh), nnx.to_pure_dict(abstract), shardings
    )
    return config, params, shardings


def _equal_trees(a, b) -> None:
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("family,scan", [("llama", False), ("gpt2", True)])
def test_round_trip_is_lossless(tmp_path, family, scan):
    config, params, _ = _model(family=family, scan_layers=scan)
    save_params(tmp_path / "ck", params, config)
    loaded_config, loaded = load_params(tmp_path / "ck")
    _equal_trees(loaded, params)  # int layer keys come back as ints
    assert loaded_config.to_dict() == config.to_dict()
    assert loaded_config.mesh.rules.vocab == ("tensor", "fsdp")  # tuples stay tuples
    assert isinstance(loaded_config.model.rope_theta, float)


def test_restore_goes_straight_into_the_requested_shardings(tmp_path):
    devices = jax.devices()[:8]
    assert len(devices) == 8, "tests/conftest.py provides 8 CPU devices"
    config, params, _ = _model()
    save_params(tmp_path / "ck", params, config)
    _, _, shardings = _model(devices=devices, mesh=(1, 4, 2))
    _, loaded = load_params(tmp_path / "ck", shardings)
    for x, want in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(shardings)):
        assert x.sharding.is_equivalent_to(want, x.ndim)
    _equal_trees(jax.device_get(loaded), jax.device_get(params))
    embed = loaded["embed"]
    assert {s.data.shape for s in embed.addressable_shards} == {(embed.shape[0] // 8, 32)}  # vocab over tensor x fsdp


def test_restore_groups_are_merged_back(tmp_path, monkeypatch):
    """Leaves are restored in several Orbax calls (bounded memory); all of them come back."""
    import llm.checkpoint.params_io as params_io

    monkeypatch.setattr(params_io, "RESTORE_GROUP_BYTES", 20_000)
    config, params, _ = _model()
    save_params(tmp_path / "ck", params, config)
    assert len(params_io._restore_groups(params)) > 5
    _equal_trees(load_params(tmp_path / "ck")[1], params)


def test_save_with_dtype_casts_and_records_it(tmp_path):
    config, params, _ = _model()
    save_params(tmp_path / "ck", params, config, dtype="bfloat16")
    loaded_config, loaded = load_params(tmp_path / "ck")
    assert loaded_config.precision.params == "bfloat16"
    assert {x.dtype for x in jax.tree_util.tree_leaves(loaded)} == {np.dtype(jax.numpy.bfloat16)}
    np.testing.assert_array_equal(np.asarray(loaded["embed"]), np.asarray(params["embed"]).astype(jax.numpy.bfloat16))
    assert config.precision.params == "float32"  # the caller's config is untouched


def test_tokenizer_files_are_copied(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    (src / "tokenizer.json").write_text('{"fake": 1}')
    (src / "tokenizer_config.json").write_text("{}")
    (src / "sp.model").write_bytes(b"spm")
    (src / "model.safetensors").write_bytes(b"weights are not tokenizer files")
    config, params, _ = _model()
    save_params(tmp_path / "ck", params, config, tokenizer_dir=src)
    copied = sorted(p.name for p in (tmp_path / "ck" / TOKENIZER_DIR).iterdir())
    assert copied == ["sp.model", "tokenizer.json", "tokenizer_config.json"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no tokenizer files"):
        save_params(tmp_path / "ck2", params, config, tokenizer_dir=empty)
    assert not (tmp_path / "ck2").exists()  # refused before anything was written


def test_clear_errors(tmp_path):
    config, params, _ = _model()
    with pytest.raises(UserError, match="does not exist"):
        load_params(tmp_path / "nowhere")
    save_params(tmp_path / "ck", params, config)
    with pytest.raises(UserError, match="already holds a params checkpoint"):
        save_params(tmp_path / "ck", params, config)
    (tmp_path / "ck" / CONFIG_FILE).rename(tmp_path / "config.bak")
    with pytest.raises(UserError, match="config.json.*missing"):
        load_params(tmp_path / "ck")
    (tmp_path / "config.bak").rename(tmp_path / "ck" / CONFIG_FILE)
    with pytest.raises(UserError, match="do not match the model"):
        load_params(tmp_path / "ck", {"embed": jax.sharding.SingleDeviceSharding(jax.devices()[0])})


@pytest.mark.parametrize("damage", ["all_data", "largest_data", "metadata"])
def test_truncated_params_are_refused(tmp_path, damage):
    config, params, _ = _model()
    save_params(tmp_path / "ck", params, config)
    files = sorted((p for p in (tmp_path / "ck" / PARAMS_DIR).rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)
    data = [p for p in files if p.parent.name == "d"]
    victims = {"all_data": data, "largest_data": data[:1], "metadata": [tmp_path / "ck" / PARAMS_DIR / "_METADATA"]}[damage]
    assert victims and all(p.exists() for p in victims)
    for p in victims:  # cut short, as an interrupted copy leaves them
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    with pytest.raises(UserError, match="truncated"):
        load_params(tmp_path / "ck")


def test_config_json_rejects_unknown_keys_and_keeps_types():
    config = base_config()
    config.optim.lr = 1e-3
    back = config_from_json(config_to_json(config))
    assert back.optim.lr == 1e-3 and back.to_dict() == config.to_dict()
    with pytest.raises(UserError, match="unknown config key 'model.flux'"):
        config_from_json('{"model": {"flux": 1}}')


def test_load_config_json_alone(tmp_path):
    config, params, _ = _model(family="gpt2")
    save_params(tmp_path / "ck", params, config)
    assert load_config_json(tmp_path / "ck").model.family == "gpt2"
