"""PEFT-format adapters: what we export loads with the `peft` library onto a transformers model
built locally and gives our logits; PEFT adapters import back; wrong bases are refused."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from interop_models import VOCAB, build_hf_model
from llm.config.loading import load_config
from llm.errors import UserError
from llm.interop.hf_import import load_hf_checkpoint
from llm.peft import lora
from llm.peft.hf_peft import export_peft, load_peft
from llm.peft.spec import peft_spec


def run(graphdef, params, *inputs):
    """The model's logits, jitted (op-by-op dispatch would dominate the test's time)."""
    return np.asarray(jax.jit(lambda p, *x: nnx.merge(graphdef, p)(*x))(params, *inputs))

TARGETS = {"llama": "all_linear", "qwen3": "all_linear", "gemma2": "all_linear", "gemma3": "all_linear",
           "mistral_window": "all_linear", "gpt2": r"attn/(q|v|o)/kernel$|mlp/up/kernel$"}  # GPT-2: part of the fused c_attn


def adapted_model(directory, family, seed=0):
    hf = build_hf_model(family, directory / "hf", seed=seed)
    config, graphdef, params = load_hf_checkpoint(directory / "hf")
    spec = peft_spec(load_config("configs/tiny.py", ["peft.lora_rank=4", "peft.lora_alpha=8", f"peft.lora_targets={TARGETS[family]}"]))
    g, adapted, info = lora.add_lora(graphdef, params, spec, seed=0)
    leaves, tree = jax.tree_util.tree_flatten_with_path(adapted)
    adapted = jax.tree_util.tree_unflatten(tree, [
        0.3 * jax.random.normal(jax.random.key(i), x.shape) if "lora_b" in jax.tree_util.keystr(p) else x for i, (p, x) in enumerate(leaves)
    ])
    return hf, graphdef, params, g, adapted, info, spec


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen3", "gemma2", "gemma3", "mistral_window"])
def test_peft_export_loads_in_peft_with_our_logits_and_imports_back(tmp_path, family):
    import peft
    import torch

    hf, graphdef, params, g, adapted, info, spec = adapted_model(tmp_path, family)
    tokens = np.random.default_rng(0).integers(3, VOCAB, (2, 12))
    ours = run(g, adapted, jnp.asarray(tokens))[..., :VOCAB]
    base = run(graphdef, params, jnp.asarray(tokens))[..., :VOCAB]
    assert np.abs(ours - base).max() > 0.1

    _, adapters = lora.unmerge(adapted)
    module = lora.abstract_module(graphdef, params)
    export_peft(tmp_path / "peft", adapters, info, module.spec, spec)
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0 and config["fan_in_fan_out"] == (family == "gpt2")
    if family == "gpt2":  # q and v adapters fuse into one rank-8 c_attn adapter
        assert config["rank_pattern"] == {f"transformer.h.{i}.attn.c_attn": 8 for i in range(2)}
    else:  # all_linear: the seven projections of every layer, never a (QK- or sandwich) norm
        assert config["target_modules"] == sorted(
            f"model.layers.{i}.{part}" for i in range(hf.config.num_hidden_layers)
            for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))
    with torch.no_grad():
        theirs = peft.PeftModel.from_pretrained(hf, str(tmp_path / "peft")).eval()(torch.tensor(tokens)).logits.numpy()
    assert np.abs(theirs - ours).max() <= 1e-4

    g2, back, info2 = load_peft(tmp_path / "peft", graphdef, params, spec)
    np.testing.assert_allclose(run(g2, back, jnp.asarray(tokens))[..., :VOCAB], ours, rtol=1e-5, atol=1e-5)


def test_peft_import_refuses_another_family_or_shape(tmp_path):
    hf, graphdef, params, g, adapted, info, spec = adapted_model(tmp_path / "a", "llama")
    _, adapters = lora.unmerge(adapted)
    export_peft(tmp_path / "peft", adapters, info, lora.abstract_module(graphdef, params).spec, spec)
    _, gpt2_graphdef, gpt2_params = load_hf_checkpoint(build_hf_model("gpt2", tmp_path / "gpt2") and tmp_path / "gpt2")
    with pytest.raises(UserError, match=r"targets model.layers.\d+.\w+.\w+_proj, which this gpt2 model does not have"):
        load_peft(tmp_path / "peft", gpt2_graphdef, gpt2_params, spec)
    bigger = tmp_path / "bigger"
    import transformers
    from interop_models import hf_config

    cfg = hf_config("llama")
    cfg.hidden_size, cfg.intermediate_size = 128, 256
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(bigger)
    _, big_graphdef, big_params = load_hf_checkpoint(bigger)
    with pytest.raises(UserError, match="trained on a base of another shape"):
        load_peft(tmp_path / "peft", big_graphdef, big_params, spec)
