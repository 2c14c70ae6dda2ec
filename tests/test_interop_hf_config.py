"""config.json <-> our config: field mapping for each family (transformers 4 and 5 layouts),
refusals that name the field, and export configs transformers reads back to the same model."""

from __future__ import annotations

import logging

import pytest

from llm.config.base import base_config
from llm.errors import ConfigError, UserError
from llm.interop.hf_config import compatible_model_type, config_to_hf, hf_to_config

LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300, "max_position_embeddings": 128,
         "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False}
ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
GPT2 = {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 300, "n_positions": 128}


def test_llama_fields():
    m = hf_to_config({**LLAMA, "rope_theta": 500000.0, "rope_scaling": ROPE, "head_dim": 32}).model
    assert (m.family, m.vocab_size, m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.head_dim, m.d_ff) == \
        ("llama", 300, 64, 2, 4, 2, 32, 128)
    assert (m.max_seq_len, m.norm_eps, m.rope_theta, m.qkv_bias, m.tie_embeddings) == (128, 1e-5, 500000.0, False, False)
    r = m.rope_scaling
    assert (r.type, r.factor, r.low_freq_factor, r.high_freq_factor, r.original_max_position) == ("llama3", 8.0, 1.0, 4.0, 64)


def test_transformers5_rope_parameters_layout():
    m = hf_to_config({**LLAMA, "rope_parameters": {**ROPE, "rope_theta": 500000.0}}).model
    assert (m.rope_theta, m.rope_scaling.type, m.rope_scaling.factor) == (500000.0, "llama3", 8.0)
    m = hf_to_config({**LLAMA, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}).model
    assert (m.rope_theta, m.rope_scaling.type) == (1e6, "")
    m = hf_to_config({**LLAMA, "rope_scaling": {"type": "llama3", **{k: v for k, v in ROPE.items() if k != "rope_type"}}}).model
    assert m.rope_scaling.type == "llama3"  # the pre-4.43 "type" key


def test_qwen2_mistral_and_gpt2():
    q = hf_to_config({**LLAMA, "model_type": "qwen2", "tie_word_embeddings": True, "use_sliding_window": False,
                      "sliding_window": 4096, "layer_types": ["full_attention"] * 2}).model
    assert q.qkv_bias and q.tie_embeddings and q.head_dim == 16
    mi = hf_to_config({**LLAMA, "model_type": "mistral", "sliding_window": None}).model
    assert mi.family == "llama" and not mi.qkv_bias
    g = hf_to_config(GPT2).model
    assert (g.family, g.d_model, g.n_heads, g.n_kv_heads, g.d_ff, g.max_seq_len, g.tie_embeddings) == ("gpt2", 64, 4, 4, 256, 128, True)
    assert hf_to_config({**GPT2, "n_inner": 100, "tie_word_embeddings": False}).model.d_ff == 100


def test_defaults_when_keys_are_absent():
    minimal = {k: v for k, v in LLAMA.items() if k not in ("num_key_value_heads", "tie_word_embeddings", "hidden_act")}
    m = hf_to_config(minimal).model
    assert m.n_kv_heads == 4 and m.tie_embeddings is False and m.rope_theta == 10000.0


def test_base_and_overrides():
    base = base_config()
    base.optim.lr = 1e-5
    base.model.scan_layers = True
    config = hf_to_config(LLAMA, base, ["precision.params=bfloat16", "model.remat=full"])
    assert config.optim.lr == 1e-5 and config.model.scan_layers and config.model.remat == "full"
    assert config.precision.params == "bfloat16" and base.precision.params == "float32"  # base untouched
    assert config.data.seq_len == 128  # fits max_seq_len
    tiny = hf_to_config({**LLAMA, "max_position_embeddings": 64})
    assert tiny.data.seq_len == 64  # the default is lowered so the config validates
    with pytest.raises(ConfigError, match="data.seq_len=128 exceeds model.max_seq_len=64"):
        hf_to_config({**LLAMA, "max_position_embeddings": 64}, base_config())  # a base's own choice is not changed
    with pytest.raises(ConfigError, match="unknown config key 'model.nope'"):
        hf_to_config(LLAMA, overrides=["model.nope=1"])
    with pytest.raises(UserError, match="contradicts"):
        hf_to_config(LLAMA, overrides=["model.family=gpt2"])


@pytest.mark.parametrize("hf,field", [
    ({**LLAMA, "model_type": "gemma"}, "model_type='gemma'"),
    ({**LLAMA, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling.rope_type='yarn'"),
    ({**LLAMA, "rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, "rope_parameters.rope_type='dynamic'"),
    ({**LLAMA, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "no 'low_freq_factor'"),
    ({**LLAMA, "hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({**LLAMA, "attention_bias": True}, "attention_bias=True"),
    ({**LLAMA, "mlp_bias": True}, "mlp_bias=True"),
    ({**LLAMA, "partial_rotary_factor": 0.5}, "partial_rotary_factor=0.5"),
    ({**LLAMA, "attn_logit_softcapping": 50.0}, "attn_logit_softcapping=50.0"),
    ({**LLAMA, "model_type": "qwen3", "final_logit_softcapping": 30.0}, "final_logit_softcapping=30.0"),
    ({**LLAMA, "sliding_window": 32}, "sliding_window=32"),
    ({**LLAMA, "model_type": "qwen3", "num_experts": 8}, "num_experts=8"),
    ({**LLAMA, "model_type": "qwen3_moe"}, "model_type='qwen3_moe'"),
    ({**LLAMA, "model_type": "gemma3"}, "model_type='gemma3'"),
    ({**LLAMA, "model_type": "gemma2", "hidden_activation": "relu"}, "hidden_activation='relu'"),
    ({**LLAMA, "model_type": "gemma3_text", "use_bidirectional_attention": True}, "use_bidirectional_attention=True"),
    ({**LLAMA, "model_type": "gemma3_text", "rope_parameters": {
        "full_attention": {"rope_type": "default", "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}}, "sliding_attention.rope_type='linear'"),
    ({**LLAMA, "model_type": "qwen2", "layer_types": ["full_attention", "chunked_attention"]}, "layer_types='chunked_attention'"),
    ({**LLAMA, "quantization_config": {"quant_method": "gptq"}}, "quantization_config='gptq'"),
    ({k: v for k, v in LLAMA.items() if k != "hidden_size"}, "no 'hidden_size'"),
    ({**GPT2, "activation_function": "relu"}, "activation_function='relu'"),
    ({**GPT2, "scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
    ({**GPT2, "scale_attn_weights": False}, "scale_attn_weights=False"),
    ({**GPT2, "add_cross_attention": True}, "add_cross_attention=True"),
])
def test_refusals_name_the_field(hf, field):
    with pytest.raises(UserError) as err:
        hf_to_config(hf)
    assert field in str(err.value) and "\n" not in str(err.value)


def test_family_fields_windows_and_rope_per_layer_type():
    mistral = hf_to_config({**LLAMA, "model_type": "mistral", "sliding_window": 32}).model
    assert (mistral.sliding_window, tuple(mistral.layer_types)) == (32, ())  # every layer windowed
    qwen = hf_to_config({**LLAMA, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 32, "max_window_layers": 1}).model
    assert (qwen.sliding_window, tuple(qwen.layer_types)) == (32, ("full", "sliding"))
    qwen3 = hf_to_config({**LLAMA, "model_type": "qwen3", "head_dim": 32}).model
    assert qwen3.qk_norm and not qwen3.qkv_bias and qwen3.head_dim == 32 and not qwen3.sliding_window
    gemma2 = hf_to_config({**LLAMA, "model_type": "gemma2", "num_hidden_layers": 4, "sliding_window": 8, "query_pre_attn_scalar": 16,
                           "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}).model
    assert tuple(gemma2.layer_types) == ("sliding", "full", "sliding", "full")  # transformers 4 configs: alternating
    assert (gemma2.attn_softcap, gemma2.final_softcap, gemma2.query_pre_attn_scalar) == (50.0, 30.0, 16.0)
    assert gemma2.norm_plus_one and gemma2.post_norms and gemma2.embed_scale and not gemma2.qk_norm
    untied = {k: v for k, v in LLAMA.items() if k != "tie_word_embeddings"}
    assert hf_to_config({**untied, "model_type": "gemma2"}).model.tie_embeddings  # Gemma's default: tied
    assert gemma2.mlp_activation == "gelu_tanh"
    # Gemma 3, transformers 4 layout: pattern, local base, global linear scaling.
    gemma3 = hf_to_config({**LLAMA, "model_type": "gemma3_text", "num_hidden_layers": 6, "sliding_window": 8,
                           "sliding_window_pattern": 3, "rope_theta": 1e6, "rope_local_base_freq": 1e4,
                           "rope_scaling": {"rope_type": "linear", "factor": 8.0}}).model
    assert tuple(gemma3.layer_types) == ("sliding", "sliding", "full") * 2 and gemma3.qk_norm
    assert (gemma3.rope_theta, gemma3.rope_local_theta, gemma3.rope_scaling.type, gemma3.rope_scaling.factor) == (1e6, 1e4, "linear", 8.0)
    # The same in the transformers 5 layout.
    v5 = hf_to_config({**LLAMA, "model_type": "gemma3_text", "num_hidden_layers": 6, "sliding_window": 8,
                       "layer_types": ["sliding_attention", "sliding_attention", "full_attention"] * 2,
                       "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                                           "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}).model
    assert v5.to_dict() == gemma3.to_dict()


def test_unknown_keys_are_logged_by_name(caplog):
    with caplog.at_level(logging.WARNING, logger="llm"):
        hf_to_config({**LLAMA, "fancy_new_option": 3, "dtype": "bfloat16"})
    assert "fancy_new_option" in caplog.text and "dtype" not in caplog.text


@pytest.mark.parametrize("hf,model_type", [
    ({**LLAMA, "rope_theta": 500000.0, "rope_scaling": ROPE, "head_dim": 32, "tie_word_embeddings": True}, "llama"),
    ({**LLAMA, "model_type": "qwen2", "tie_word_embeddings": True}, "qwen2"),
    ({**LLAMA, "model_type": "mistral"}, "mistral"),
    ({**LLAMA, "model_type": "mistral", "sliding_window": 16}, "mistral"),
    ({**LLAMA, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 16, "max_window_layers": 1}, "qwen2"),
    ({**LLAMA, "model_type": "qwen3", "head_dim": 32, "tie_word_embeddings": True}, "qwen3"),
    ({**LLAMA, "model_type": "gemma2", "num_hidden_layers": 4, "sliding_window": 8, "query_pre_attn_scalar": 16,
      "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}, "gemma2"),
    ({**LLAMA, "model_type": "gemma3_text", "num_hidden_layers": 6, "sliding_window": 8, "query_pre_attn_scalar": 16,
      "rope_theta": 1e6, "rope_local_base_freq": 1e4, "rope_scaling": {"rope_type": "linear", "factor": 8.0}}, "gemma3_text"),
    (GPT2, "gpt2"),
])
def test_export_config_round_trips_through_transformers(hf, model_type):
    """Our config -> config.json -> transformers config object -> our config: the same model."""
    import transformers

    ours = hf_to_config(hf)
    exported = config_to_hf(ours, model_type, "float32", {"bos_token_id": 0, "eos_token_id": 1})
    loaded = transformers.AutoConfig.for_model(**exported).to_dict()
    again = hf_to_config(loaded)
    assert again.model.to_dict() == ours.model.to_dict()
    assert loaded["model_type"] == model_type and loaded["bos_token_id"] == 0


def test_export_model_type_checks():
    qwen = hf_to_config({**LLAMA, "model_type": "qwen2"})
    llama = hf_to_config(LLAMA)
    assert config_to_hf(qwen)["model_type"] == "qwen2" and config_to_hf(llama)["model_type"] == "llama"
    assert compatible_model_type(llama, "mistral") and not compatible_model_type(llama, "qwen2")
    with pytest.raises(UserError, match="export as 'qwen2'"):
        config_to_hf(qwen, "llama")
    with pytest.raises(UserError, match="cannot be exported as 'gpt2'"):
        config_to_hf(llama, "gpt2")
    with pytest.raises(UserError, match="not one of"):
        config_to_hf(llama, "falcon")
    gemma2 = hf_to_config({**LLAMA, "model_type": "gemma2", "sliding_window": 8})
    assert config_to_hf(gemma2)["model_type"] == "gemma2" and not compatible_model_type(gemma2, "llama")
    with pytest.raises(UserError, match="cannot be exported as 'qwen3'.*export as 'gemma2'"):
        config_to_hf(gemma2, "qwen3")
    windowed = hf_to_config({**LLAMA, "model_type": "mistral", "sliding_window": 16})
    assert config_to_hf(windowed)["model_type"] == "mistral" and not compatible_model_type(windowed, "llama")
    moot = hf_to_config({**LLAMA, "model_type": "mistral", "sliding_window": 4096})  # never applies within 128 positions
    assert compatible_model_type(moot, "llama") and config_to_hf(moot, "mistral")["sliding_window"] == 4096
