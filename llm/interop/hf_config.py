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
from typing import Iterable

import ml_collections

from llm.config.base import base_config
from llm.config.loading import apply_overrides
from llm.config.validate import validate_config
from llm.errors import UserError
from llm.interop import hf_families
from llm.interop.hf_families import FAMILIES, refuse, require

log = logging.getLogger("llm")

SUPPORTED = (*FAMILIES, "gpt2")
ARCHITECTURES = {**{mt: f.architecture for mt, f in FAMILIES.items()}, "gpt2": "GPT2LMHeadModel"}

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
_GPT2_KEYS = {
    "vocab_size", "n_embd", "n_layer", "n_head", "n_inner", "n_positions", "layer_norm_epsilon",
    "activation_function", "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "add_cross_attention",
}
# Architecture fields of config.model; everything else in the section is a layout choice.
ARCH_FIELDS = (
    "family", "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
    "max_seq_len", "norm_eps", "rope_theta", "rope_scaling", "qkv_bias", "tie_embeddings",
    "sliding_window", "layer_types", "rope_local_theta", "qk_norm", "norm_plus_one", "post_norms",
    "mlp_activation", "embed_scale", "query_pre_attn_scalar", "attn_softcap", "final_softcap",
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


def _check_gpt2(hf: dict) -> None:
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise refuse("activation_function", act, "GPT-2 here uses the tanh GELU (gelu_new)")
    if not hf.get("scale_attn_weights", True):
        raise refuse("scale_attn_weights", False, "attention scores are always scaled by 1/sqrt(head_dim)")
    if hf.get("scale_attn_by_inverse_layer_idx"):
        raise refuse("scale_attn_by_inverse_layer_idx", True, "per-layer attention scaling is not implemented")
    if hf.get("add_cross_attention"):
        raise refuse("add_cross_attention", True, "decoder-only models only")


def _architecture(hf: dict) -> dict:
    """Our model fields from a Hugging Face config (before overrides)."""
    mt = hf.get("model_type")
    if mt == "gemma3":
        raise refuse("model_type", mt, "this is Gemma 3's multimodal checkpoint; import a text-only gemma3_text "
                     f"checkpoint (Gemma3ForCausalLM). Supported: {', '.join(SUPPORTED)}")
    if mt not in SUPPORTED:
        raise refuse("model_type", mt, f"supported: {', '.join(SUPPORTED)}")
    if hf.get("quantization_config"):
        raise refuse("quantization_config", hf["quantization_config"].get("quant_method", "?"), "load unquantized weights")
    known = _IRRELEVANT | (_GPT2_KEYS if mt == "gpt2" else hf_families.KEYS)
    unknown = sorted(k for k in hf if k not in known)
    if unknown:
        log.warning("config.json keys not used by the %s import (check they do not change the model): %s", mt, ", ".join(unknown))
    from llm.interop.hf_reward import is_sequence_classifier

    if mt == "gpt2":
        d = int(require(hf, "n_embd"))
        heads = int(require(hf, "n_head"))
        arch = dict(
            family="gpt2", vocab_size=int(require(hf, "vocab_size")), d_model=d, n_layers=int(require(hf, "n_layer")),
            n_heads=heads, n_kv_heads=heads, head_dim=0, d_ff=int(hf.get("n_inner") or 4 * d),
            max_seq_len=int(require(hf, "n_positions")), norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            rope_theta=10000.0, rope_scaling=None, qkv_bias=False, tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        )
    else:
        arch = hf_families.architecture(hf, mt)
    if is_sequence_classifier(hf):
        log.info("%s is a sequence classifier: importing its backbone, with the (absent) LM head tied to the embedding", hf["architectures"][0])
        arch["tie_embeddings"] = True
    return arch


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
        scaling = arch["rope_scaling"] or {}
        m.rope_scaling.type = scaling.get("type", "")
        if scaling:
            m.rope_scaling.factor = float(scaling["factor"])
        if scaling.get("type") == "llama3":
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
    if config.model.family != arch["family"]:
        raise UserError(f"--config.model.family={config.model.family} contradicts the checkpoint's model_type {hf['model_type']!r}")
    validate_config(config)
    return config


def default_model_type(config: ml_collections.ConfigDict) -> str:
    m = config.model
    return "gpt2" if m.family == "gpt2" else hf_families.default_model_type(m)


def compatible_model_type(config: ml_collections.ConfigDict, model_type: str | None) -> bool:
    """Whether transformers' `model_type` can express this model exactly."""
    m = config.model
    if model_type not in SUPPORTED or (model_type == "gpt2") != (m.family == "gpt2"):
        return False
    return model_type == "gpt2" or hf_families.inexpressible(m, model_type) is None


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
    if mt != "gpt2":
        why = hf_families.inexpressible(m, mt)
        if why:
            raise UserError(f"this model cannot be exported as {mt!r}: {why}; export as {default_model_type(config)!r}")
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
    return {**common, **hf_families.export_fields(m, mt)}
