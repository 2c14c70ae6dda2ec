"""The Qwen3 / Gemma 3 LoRA presets: they load and validate, their model sections are what the
Hugging Face import makes of the real checkpoints' config.json (Hub layout and transformers 5's),
the 262k / 152k vocabularies keep the LM head chunked, and every LoRA target preset lands on
the Hugging Face projections (never on a norm)."""

from __future__ import annotations

import json

import pytest
from flax import nnx

from llm.config.loading import load_config
from llm.interop.hf_config import ARCH_FIELDS, hf_to_config
from llm.model.build import abstract_model
from llm.model.spec import model_spec
from llm.peft.adapters_io import unscanned_path
from llm.peft.hf_peft import module_map
from llm.peft.lora import find_targets
from llm.peft.spec import TARGET_PRESETS, peft_spec

# config.json of Qwen/Qwen3-0.6B and google/gemma-3-1b-it as the Hub has them (transformers 4 layout).
QWEN3_0_6B_HUB = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024, "initializer_range": 0.02,
    "intermediate_size": 3072, "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
    "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False,
    "vocab_size": 151936,
}
GEMMA3_1B_HUB = {
    "architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": None, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": [1, 106],
    "final_logit_softcapping": None, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152,
    "initializer_range": 0.02, "intermediate_size": 6912, "max_position_embeddings": 32768, "model_type": "gemma3_text",
    "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1, "pad_token_id": 0,
    "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000, "rope_scaling": None,
    "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6, "torch_dtype": "bfloat16",
    "transformers_version": "4.50.0.dev0", "use_cache": True, "vocab_size": 262144,
}
# The same files as transformers 5.25's AutoConfig saves them (rope_parameters, layer_types, dtype).
QWEN3_0_6B_V5 = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643,
    "dtype": "bfloat16", "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024,
    "initializer_range": 0.02, "intermediate_size": 3072, "layer_types": ["full_attention"] * 28,
    "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3", "num_attention_heads": 16,
    "num_hidden_layers": 28, "num_key_value_heads": 8, "pad_token_id": None, "rms_norm_eps": 1e-06,
    "rope_parameters": {"rope_theta": 1000000, "rope_type": "default"}, "sliding_window": None,
    "tie_word_embeddings": True, "transformers_version": "5.25.0", "use_cache": True, "use_sliding_window": False,
    "vocab_size": 151936,
}
GEMMA3_1B_V5 = {
    "_sliding_window_pattern": 6, "architectures": ["Gemma3ForCausalLM"], "attention_bias": False,
    "attention_dropout": 0.0, "attn_logit_softcapping": None, "bos_token_id": 2, "cache_implementation": "hybrid",
    "dtype": "bfloat16", "eos_token_id": [1, 106], "final_logit_softcapping": None, "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152, "initializer_range": 0.02, "intermediate_size": 6912,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 4 + ["sliding_attention"] * 2,
    "max_position_embeddings": 32768, "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 26,
    "num_key_value_heads": 1, "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
    "rope_parameters": {"full_attention": {"rope_theta": 1000000, "rope_type": "default"},
                        "sliding_attention": {"rope_theta": 10000, "rope_type": "default"}},
    "sliding_window": 512, "sliding_window_pattern": 6, "tie_word_embeddings": True, "transformers_version": "5.25.0",
    "use_bidirectional_attention": False, "use_cache": True, "vocab_size": 262144,
}
PRESETS = {"configs/sft_lora_qwen3_0_6b.py": (QWEN3_0_6B_HUB, QWEN3_0_6B_V5),
           "configs/sft_lora_gemma3_1b.py": (GEMMA3_1B_HUB, GEMMA3_1B_V5)}
PROJECTIONS = {"attention": {"q_proj", "k_proj", "v_proj", "o_proj"}, "mlp": {"gate_proj", "up_proj", "down_proj"}}
PROJECTIONS["all_linear"] = PROJECTIONS["attention"] | PROJECTIONS["mlp"]


def arch(config) -> dict:
    return json.loads(config.model.to_json_best_effort()) | {"layer_types": list(config.model.layer_types)}


@pytest.mark.parametrize("path", sorted(PRESETS))
def test_preset_model_is_the_import_of_the_real_config_json(path):
    config = load_config(path)  # validated, as `llm config` / `llm sft` load it
    ours = arch(config)
    for hf in PRESETS[path]:
        imported = arch(hf_to_config(hf))
        assert {f: ours[f] for f in ARCH_FIELDS} == {f: imported[f] for f in ARCH_FIELDS}
    assert config.model.loss_chunk and config.data.seq_len % config.model.loss_chunk == 0  # the LM head stays chunked
    assert config.peft.lora_rank == 16 and config.finetune.task == "sft" and config.model.scan_layers


def test_v5_layout_is_what_transformers_saves_for_the_hub_files(tmp_path):
    import transformers

    for hub, v5 in PRESETS.values():
        (tmp_path / "config.json").write_text(json.dumps(hub))
        transformers.AutoConfig.from_pretrained(tmp_path).save_pretrained(tmp_path / "saved")
        assert json.loads((tmp_path / "saved" / "config.json").read_text()) == v5


@pytest.mark.parametrize("path", sorted(PRESETS))
def test_lora_target_presets_land_on_the_hf_projections_only(path):
    from interop_models import single_device_rules

    config = load_config(path)
    spec = model_spec(config, platform="cpu")
    graphdef, state = abstract_model(spec, single_device_rules(config))
    module = nnx.merge(graphdef, state)
    hf_of = {ours: hf for hf, names in module_map(spec).items() for ours in names}
    for preset, projections in PROJECTIONS.items():
        targets = find_targets(module, peft_spec(load_config(path, [f"peft.lora_targets={preset}"])))
        names = {".".join(map(str, unscanned_path(t, i))) for t in targets for i in range(spec.n_layers)}
        hf_names = {hf_of[n] for n in names}  # a KeyError: a target with no Hugging Face module
        assert hf_names == {f"model.layers.{i}.{'self_attn' if p.endswith(('q_proj', 'k_proj', 'v_proj', 'o_proj')) else 'mlp'}.{p}"
                            for i in range(spec.n_layers) for p in projections}, preset
    assert set(TARGET_PRESETS) == set(PROJECTIONS)
