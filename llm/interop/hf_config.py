"""Hugging Face config.json <-> our config's model section.

Only architecture fields are taken from the Hugging Face config; training, data, mesh and the
layout choices (scan_layers, remat, attention_impl) come from the base config. Every option that
changes the computation and that our model does not implement is refused with the field's name;
keys we do not recognise are logged by name, never dropped silently.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Iterable

import ml_collections

from llm.config.base import base_config
from llm.config.loading import apply_overrides
from llm.config.validate import validate_config
from llm.errors import UserError

log = logging.getLogger("llm")

LLAMA_LIKE = ("llama", "mistral", "qwen2")
SUPPORTED = (*LLAMA_LIKE, "gpt2")
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}

# Keys with no effect on the forward pass of these models (dropout is off at inference and we
# train without it, token ids live with the tokenizer, the rest is bookkeeping).
_IRRELEVANT = {
    "architectures", "model_type", "transformers_version", "dtype", "torch_dtype", "_name_or_path",
    "use_cache", "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id",
    "decoder_start_token_id", "attention_dropout", "pretraining_tp", "output_attentions",
    "output_hidden_states", "return_dict", "is_decoder", "is_encoder_decoder", "id2label", "label2id",
    "tokenizer_class", "task_specific_params", "problem_type", "prefix", "chunk_size_feed_forward",
    "tie_word_embeddings", "attn_pdrop", "embd_pdrop", "resid_pdrop", "summary_type", "summary_use_proj",
    "summary_activation", "summary_proj_to_labels", "summary_first_dropout", "n_ctx",
    "reorder_and_upcast_attn", "max_window_layers", "finetuning_task", "max_length",
}
# Keys read below, per family.
_LLAMA_KEYS = {
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
    "rope_theta", "rope_scaling", "rope_parameters", "attention_bias", "mlp_bias", "sliding_window",
    "use_sliding_window", "layer_types", "partial_rotary_factor",
}
_GPT2_KEYS = {
    "vocab_size", "n_embd", "n_layer", "n_head", "n_inner", "n_positions", "layer_norm_epsilon",
    "activation_function", "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "add_cross_attention",
}
_TIE_DEFAULT = {"llama": False, "mistral": False, "qwen2": False, "gpt2": True}
# Architecture fields of config.model; everything else in the section is a layout choice.
ARCH_FIELDS = (
    "family", "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
    "max_seq_len", "norm_eps", "rope_theta", "rope_scaling", "qkv_bias", "tie_embeddings",
)


def is_hf_model_dir(path: str | Path) -> bool:
    """Whether `path` holds a Hugging Face config.json (it names architectures or model_type);
    our own checkpoints' config.json holds config sections instead."""
    try:
        hf = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(hf, dict) and ("architectures" in hf or "model_type" in hf)


def read_hf_config(src: str | Path) -> dict:
    path = Path(src) / "config.json"
    if not Path(src).is_dir():
        raise UserError(f"model directory {str(src)!r} does not exist; pass a Hugging Face model directory")
    if not path.is_file():
        raise UserError(f"{str(src)!r} has no config.json; pass a Hugging Face model directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err})") from None


def _require(hf: dict, key: str) -> Any:
    if hf.get(key) is None:
        raise UserError(f"config.json has no {key!r}; it is required for model_type {hf.get('model_type')!r}")
    return hf[key]


def _refuse(field: str, value: Any, why: str) -> UserError:
    return UserError(f"config.json {field}={value!r} is not supported: {why}")


def _rope(hf: dict) -> tuple[float, dict | None]:
    """(theta, llama3 scaling fields or None) from either the transformers 4 or 5 layout."""
    params = hf.get("rope_parameters") or {}
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    for source in ("rope_parameters", "rope_scaling"):
        fields = hf.get(source) or {}
        kind = fields.get("rope_type", fields.get("type"))
        if kind not in (None, "default"):
            break
    else:
        return theta, None
    if kind != "llama3":
        raise _refuse(f"{source}.rope_type", kind, "supported RoPE types are default and llama3")
    for key in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
        if fields.get(key) is None:
            raise UserError(f"config.json {source} of type llama3 has no {key!r}")
    return theta, fields


def _check_llama_like(hf: dict, mt: str, max_seq_len: int) -> None:
    if hf.get("hidden_act", "silu") != "silu":
        raise _refuse("hidden_act", hf["hidden_act"], "the Llama family here uses SwiGLU with silu")
    if hf.get("mlp_bias"):
        raise _refuse("mlp_bias", True, "our MLP has no biases")
    if mt == "llama" and hf.get("attention_bias"):
        raise _refuse("attention_bias", True, "Llama attention with q/k/v/o biases is not implemented (Qwen2-style q/k/v biases are)")
    for key in ("rope_parameters", "rope_scaling"):
        factor = (hf.get(key) or {}).get("partial_rotary_factor", 1.0)
        if factor != 1.0:
            raise _refuse(f"{key}.partial_rotary_factor", factor, "RoPE is applied to the whole head")
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise _refuse("partial_rotary_factor", hf["partial_rotary_factor"], "RoPE is applied to the whole head")
    sliding = hf.get("sliding_window")
    uses_window = sliding is not None and (mt == "mistral" or hf.get("use_sliding_window"))
    if uses_window and sliding < max_seq_len:
        raise UserError(
            f"config.json sliding_window={sliding} is smaller than model.max_seq_len={max_seq_len}: sliding-window "
            f"attention is not implemented; pass --config.model.max_seq_len={sliding} (attention within one window is exact)"
        )
    for kind in hf.get("layer_types") or ():
        if kind == "sliding_attention" and uses_window:
            continue  # exact: the window covers every sequence we will run (checked above)
        if kind != "full_attention":
            raise _refuse("layer_types", kind, "only full attention is implemented")


def _check_gpt2(hf: dict) -> None:
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise _refuse("activation_function", act, "GPT-2 here uses the tanh GELU (gelu_new)")
    if not hf.get("scale_attn_weights", True):
        raise _refuse("scale_attn_weights", False, "attention scores are always scaled by 1/sqrt(head_dim)")
    if hf.get("scale_attn_by_inverse_layer_idx"):
        raise _refuse("scale_attn_by_inverse_layer_idx", True, "per-layer attention scaling is not implemented")
    if hf.get("add_cross_attention"):
        raise _refuse("add_cross_attention", True, "decoder-only models only")


def _architecture(hf: dict) -> dict:
    """Our model fields from a Hugging Face config (before overrides)."""
    mt = hf.get("model_type")
    if mt not in SUPPORTED:
        raise _refuse("model_type", mt, f"supported: {', '.join(SUPPORTED)}")
    if hf.get("quantization_config"):
        raise _refuse("quantization_config", hf["quantization_config"].get("quant_method", "?"), "load unquantized weights")
    known = _IRRELEVANT | (_GPT2_KEYS if mt == "gpt2" else _LLAMA_KEYS)
    unknown = sorted(k for k in hf if k not in known)
    if unknown:
        log.warning("config.json keys not used by the %s import (check they do not change the model): %s", mt, ", ".join(unknown))
    tie = bool(hf.get("tie_word_embeddings", _TIE_DEFAULT[mt]))
    from llm.interop.hf_reward import is_sequence_classifier

    if is_sequence_classifier(hf):
        log.info("%s is a sequence classifier: importing its backbone, with the (absent) LM head tied to the embedding", hf["architectures"][0])
        tie = True
    if mt == "gpt2":
        d = int(_require(hf, "n_embd"))
        heads = int(_require(hf, "n_head"))
        return dict(
            family="gpt2", vocab_size=int(_require(hf, "vocab_size")), d_model=d, n_layers=int(_require(hf, "n_layer")),
            n_heads=heads, n_kv_heads=heads, head_dim=0, d_ff=int(hf.get("n_inner") or 4 * d),
            max_seq_len=int(_require(hf, "n_positions")), norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            rope_theta=10000.0, rope_scaling=None, qkv_bias=False, tie_embeddings=tie,
        )
    d = int(_require(hf, "hidden_size"))
    heads = int(_require(hf, "num_attention_heads"))
    theta, scaling = _rope(hf)
    return dict(
        family="llama", vocab_size=int(_require(hf, "vocab_size")), d_model=d,
        n_layers=int(_require(hf, "num_hidden_layers")), n_heads=heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or heads), head_dim=int(hf.get("head_dim") or d // heads),
        d_ff=int(_require(hf, "intermediate_size")), max_seq_len=int(_require(hf, "max_position_embeddings")),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_theta=theta, rope_scaling=scaling,
        qkv_bias=mt == "qwen2", tie_embeddings=tie,
    )


def hf_to_config(
    hf: dict, base: ml_collections.ConfigDict | None = None, overrides: Iterable[str] = ()
) -> ml_collections.ConfigDict:
    """Our config for a Hugging Face config: `base` (default base_config()) with the model's
    architecture, then `overrides` ("a.b=value"), then validated. Without a base, data.seq_len
    is lowered to the model's max_seq_len if the default exceeds it; a base keeps its own."""
    arch = _architecture(hf)
    config = copy.deepcopy(base) if base is not None else base_config()
    m = config.model
    with config.unlocked():
        for key, value in arch.items():
            if key != "rope_scaling":
                m[key] = value
        scaling = arch["rope_scaling"]
        m.rope_scaling.type = "llama3" if scaling else ""
        if scaling:
            m.rope_scaling.factor = float(scaling["factor"])
            m.rope_scaling.low_freq_factor = float(scaling["low_freq_factor"])
            m.rope_scaling.high_freq_factor = float(scaling["high_freq_factor"])
            m.rope_scaling.original_max_position = int(scaling["original_max_position_embeddings"])
    config.lock()
    overrides = list(overrides)
    apply_overrides(config, overrides)
    if base is None and not any(o.startswith("data.seq_len=") for o in overrides):
        config.data.seq_len = min(config.data.seq_len, config.model.max_seq_len)  # the default may exceed this model's
    if hf["model_type"] == "gpt2":
        _check_gpt2(hf)
    else:
        _check_llama_like(hf, hf["model_type"], config.model.max_seq_len)
    if config.model.family != arch["family"]:
        raise UserError(f"--config.model.family={config.model.family} contradicts the checkpoint's model_type {hf['model_type']!r}")
    validate_config(config)
    return config


def default_model_type(config: ml_collections.ConfigDict) -> str:
    m = config.model
    if m.family == "gpt2":
        return "gpt2"
    return "qwen2" if m.qkv_bias else "llama"


def compatible_model_type(config: ml_collections.ConfigDict, model_type: str | None) -> bool:
    """Whether transformers' `model_type` can express this model exactly."""
    m = config.model
    if model_type not in SUPPORTED:
        return False
    return (model_type == "gpt2") == (m.family == "gpt2") and (model_type == "qwen2") == bool(m.qkv_bias)


def config_to_hf(
    config: ml_collections.ConfigDict,
    model_type: str | None = None,
    dtype: str = "float32",
    token_ids: dict | None = None,
) -> dict:
    """A transformers config.json (readable by transformers 4.43+ and 5) for our model.

    `token_ids` may hold bos_token_id / eos_token_id / pad_token_id.
    """
    m = config.model
    mt = model_type or default_model_type(config)
    if mt not in SUPPORTED:
        raise UserError(f"model type {mt!r} is not one of {', '.join(SUPPORTED)}")
    head_dim = m.head_dim or m.d_model // m.n_heads
    if (mt == "gpt2") != (m.family == "gpt2"):
        raise UserError(f"a model.family={m.family} model cannot be exported as {mt!r}; use {default_model_type(config)!r}")
    if mt == "qwen2" and not m.qkv_bias:
        raise UserError("Qwen2 always has q/k/v biases but this model has none (model.qkv_bias=false); export as 'llama'")
    if mt in ("llama", "mistral") and m.qkv_bias:
        raise UserError(f"{mt} has no q/k/v-only biases but this model has them (model.qkv_bias=true); export as 'qwen2'")
    common = {"architectures": [ARCHITECTURES[mt]], "model_type": mt, "vocab_size": int(m.vocab_size),
              "tie_word_embeddings": bool(m.tie_embeddings), "dtype": dtype, "torch_dtype": dtype, "use_cache": True,
              "bos_token_id": None, "eos_token_id": None, "pad_token_id": None, **(token_ids or {})}
    if mt == "gpt2":
        if head_dim * m.n_heads != m.d_model:
            raise UserError(f"GPT-2 needs head_dim * n_heads == d_model, got {head_dim} * {m.n_heads} != {m.d_model}")
        return {**common, "n_embd": m.d_model, "n_layer": m.n_layers, "n_head": m.n_heads, "n_inner": m.d_ff,
                "n_positions": m.max_seq_len, "n_ctx": m.max_seq_len, "layer_norm_epsilon": float(m.norm_eps),
                "activation_function": "gelu_new", "attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0,
                "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False}
    scaling = None
    if m.rope_scaling.type == "llama3":
        r = m.rope_scaling
        scaling = {"rope_type": "llama3", "factor": float(r.factor), "low_freq_factor": float(r.low_freq_factor),
                   "high_freq_factor": float(r.high_freq_factor), "original_max_position_embeddings": int(r.original_max_position)}
    out = {**common, "hidden_size": m.d_model, "intermediate_size": m.d_ff, "num_hidden_layers": m.n_layers,
           "num_attention_heads": m.n_heads, "num_key_value_heads": m.n_kv_heads, "head_dim": head_dim,
           "hidden_act": "silu", "max_position_embeddings": m.max_seq_len, "rms_norm_eps": float(m.norm_eps),
           "rope_theta": float(m.rope_theta), "rope_scaling": scaling, "attention_dropout": 0.0}
    if mt == "llama":
        out.update(attention_bias=False, mlp_bias=False)
    elif mt == "mistral":
        out.update(sliding_window=None)
    else:
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=m.n_layers)
    return out
