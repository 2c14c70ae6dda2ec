"""Adapters saved alone (small files) load back onto the same base, in either layer layout,
and are refused by another model."""

import functools
import json

import jax
import numpy as np
import pytest
from flax import nnx

from helpers import random_batch, tiny_config
from llm.errors import UserError
from llm.model.build import init_params
from llm.model.spec import model_spec
from llm.parallel.mesh import build_mesh
from llm.parallel.rules import AxisRules
from llm.peft import lora
from llm.peft.adapters_io import load_adapters, save_adapters
from llm.peft.spec import peft_spec


def run(graphdef, params, *inputs):
    """The model's logits, jitted (op-by-op dispatch would dominate the test's time)."""
    return np.asarray(jax.jit(lambda p, *x: nnx.merge(graphdef, p)(*x))(params, *inputs))


@functools.lru_cache(maxsize=None)
def model(*overrides):
    config = tiny_config("peft.lora_rank=4", *overrides)
    rules = AxisRules.from_config(config.mesh.rules, build_mesh(config.mesh, jax.devices()[:1]))
    graphdef, params, _ = init_params(model_spec(config, platform="cpu"), rules, 0)
    return config, graphdef, params


def test_save_and_load_roundtrip_across_layouts(tmp_path):
    config, graphdef, params = model()
    g, adapted, info = lora.add_lora(graphdef, params, peft_spec(config), seed=0)
    adapted = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.1 if "lora_b" in jax.tree_util.keystr(p) else x, adapted)
    base, adapters = lora.unmerge(adapted)
    model_json = json.loads(config.model.to_json_best_effort())
    save_adapters(tmp_path / "adapter", adapters, info, model_json, config.peft.to_dict())
    size = (tmp_path / "adapter" / "adapter.safetensors").stat().st_size
    base_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(params))
    assert size < 0.2 * base_bytes
    batch = random_batch(256, 2, 32)
    x = (batch["inputs"], batch["positions"], batch["segment_ids"])
    reference = run(g, adapted, *x)

    g2, loaded, _ = load_adapters(tmp_path / "adapter", graphdef, params, model_json, peft_spec(config))
    np.testing.assert_array_equal(run(g2, loaded, *x), reference)

    scan_config, scan_graphdef, _ = model("model.scan_layers=true")
    stacked = {**params, "blocks": jax.tree_util.tree_map(lambda *xs: np.stack(xs), *[params["blocks"][i] for i in range(2)])}
    g3, loaded3, info3 = load_adapters(tmp_path / "adapter", scan_graphdef, stacked, model_json, peft_spec(scan_config))
    assert info3.targets[0].lead == (2,)
    np.testing.assert_allclose(run(g3, loaded3, *x), reference, rtol=1e-5, atol=1e-5)


def test_another_model_is_refused(tmp_path):
    config, graphdef, params = model()
    g, adapted, info = lora.add_lora(graphdef, params, peft_spec(config), seed=0)
    _, adapters = lora.unmerge(adapted)
    save_adapters(tmp_path / "adapter", adapters, info, json.loads(config.model.to_json_best_effort()), config.peft.to_dict())
    other, other_graphdef, other_params = model("model.d_model=64")
    with pytest.raises(UserError, match=r"trained on another model \(model.d_model: checkpoint 128 vs config 64"):
        load_adapters(tmp_path / "adapter", other_graphdef, other_params, json.loads(other.model.to_json_best_effort()), peft_spec(other))
    with pytest.raises(UserError, match="holds no adapters"):
        load_adapters(tmp_path, graphdef, params, {}, peft_spec(config))
