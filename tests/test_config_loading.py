"""Config files, overrides and their errors; every preset builds abstractly with the analytic
parameter count."""

import ast
import re
from pathlib import Path

import jax
import pytest
from flax import nnx

from llm.config.loading import apply_overrides, load_config, load_config_file
from llm.errors import ConfigError
from llm.model.build import abstract_model
from llm.model.spec import model_spec, param_count
from llm.parallel.rules import AxisRules

CONFIGS = sorted(Path("configs").glob("*.py"))


def test_overrides_keep_types():
    config = load_config("configs/tiny.py", ["train.steps=7", "optim.lr=0.5", "model.scan_layers=true", "mesh.rules.embed=fsdp,tensor"])
    assert config.train.steps == 7 and isinstance(config.train.steps, int)
    assert config.optim.lr == 0.5
    assert config.model.scan_layers is True
    assert tuple(config.mesh.rules.embed) == ("fsdp", "tensor")


def test_unknown_key_names_the_closest_ones():
    config = load_config_file("configs/tiny.py")
    with pytest.raises(ConfigError, match=r"unknown config key 'train.stepz'.*train.steps"):
        apply_overrides(config, ["train.stepz=3"])
    with pytest.raises(ConfigError, match="expected an integer"):
        apply_overrides(config, ["train.steps=three"])


def test_invalid_values_are_refused():
    with pytest.raises(ConfigError, match="data.seq_len=512 exceeds model.max_seq_len=256"):
        load_config("configs/tiny.py", ["data.seq_len=512"])
    with pytest.raises(ConfigError, match="model.remat='some'"):
        load_config("configs/tiny.py", ["model.remat=some"])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_initialises_abstractly(path):
    config = load_config(path)
    assert config.is_locked
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert "llm " in doc and "Run" in doc, f"{path} docstring must give its run command"
    spec = model_spec(config, platform="cpu")
    _, state = abstract_model(spec, AxisRules.from_config(config.mesh.rules))
    counted = sum(x.size for x in jax.tree_util.tree_leaves(nnx.to_pure_dict(state)))
    assert counted == param_count(spec)
    # An exact parameter count in the docstring ("124,475,904 parameters") is this model's.
    for stated in re.findall(r"(\d{1,3}(?:,\d{3})+) parameters", doc):
        assert int(stated.replace(",", "")) == counted, f"{path} docstring says {stated} parameters, the model has {counted:,}"


def test_known_parameter_counts():
    # Published sizes: GPT-2 small 124.4M (with 50304 padded rows), Llama 3.1 8B 8.03B, Llama 3.2 1B 1.24B.
    counts = {p: param_count(model_spec(load_config(f"configs/{p}.py"), platform="cpu")) for p in ("gpt2_124m", "llama3_8b", "llama_1b")}
    assert abs(counts["gpt2_124m"] - 124.44e6) / 124.44e6 < 0.01
    assert abs(counts["llama3_8b"] - 8.03e9) / 8.03e9 < 0.01
    assert abs(counts["llama_1b"] - 1.236e9) / 1.236e9 < 0.01
    small = param_count(model_spec(load_config("configs/small.py"), platform="cpu"))
    assert 20e6 <= small <= 40e6
