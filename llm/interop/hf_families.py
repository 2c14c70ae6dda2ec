"""The RMSNorm decoder families of Hugging Face (Llama, Mistral, Qwen2, Qwen3, Gemma 1/2/3) as
our model switches, both ways.

One table says what each `model_type` is in our terms; the importer reads a config.json into
model fields with it, and the exporter picks the model_type that expresses a model exactly.
Every field that changes the computation is read or refused by name: a checkpoint is never
imported silently wrong.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from llm.errors import UserError


@dataclasses.dataclass(frozen=True)
class Family:
    architecture: str  # transformers' *ForCausalLM class
    tie_default: bool
    qkv_bias: bool = False  # Qwen2: q/k/v biases
    qk_norm: bool = False  # Qwen3, Gemma 3
    gemma: int = 0  # Gemma generation (2, 3): (1 + w) norms, scaled embeddings, GeGLU, sandwich norms
    activation_key: str = "hidden_act"


FAMILIES = {
    "llama": Family("LlamaForCausalLM", tie_default=False),
    "mistral": Family("MistralForCausalLM", tie_default=False),
    "qwen2": Family("Qwen2ForCausalLM", tie_default=False, qkv_bias=True),
    "qwen3": Family("Qwen3ForCausalLM", tie_default=False, qk_norm=True),
    "gemma2": Family("Gemma2ForCausalLM", tie_default=True, gemma=2, activation_key="hidden_activation"),
    "gemma3_text": Family("Gemma3ForCausalLM", tie_default=True, qk_norm=True, gemma=3, activation_key="hidden_activation"),
}
# Keys read by the import of these families (the rest are bookkeeping, or refused by name).
KEYS = {
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "hidden_activation", "max_position_embeddings", "rms_norm_eps",
    "rope_theta", "rope_scaling", "rope_parameters", "rope_local_base_freq", "attention_bias", "mlp_bias",
    "sliding_window", "use_sliding_window", "layer_types", "partial_rotary_factor", "max_window_layers",
    "sliding_window_pattern", "_sliding_window_pattern", "query_pre_attn_scalar", "final_logit_softcapping",
    "attn_logit_softcapping", "use_bidirectional_attention", "cache_implementation",
}
_LAYER_TYPES = {"full_attention": "full", "sliding_attention": "sliding"}
_ROPE_TYPES = ("default", "llama3", "linear")


def refuse(field: str, value: Any, why: str) -> UserError:
    return UserError(f"config.json {field}={value!r} is not supported: {why}")


def require(hf: dict, key: str) -> Any:
    if hf.get(key) is None:
        raise UserError(f"config.json has no {key!r}; it is required for model_type {hf.get('model_type')!r}")
    return hf[key]


def _rope_fields(fields: dict, where: str) -> tuple[float | None, dict | None]:
    """(theta or None, scaling {"type", ...} or None) of one rope dict (v4 rope_scaling or v5 rope_parameters)."""
    kind = fields.get("rope_type", fields.get("type")) or "default"
    if kind not in _ROPE_TYPES:
        raise refuse(f"{where}.rope_type", kind, f"supported RoPE types are {', '.join(_ROPE_TYPES)}")
    if fields.get("partial_rotary_factor", 1.0) != 1.0:
        raise refuse(f"{where}.partial_rotary_factor", fields["partial_rotary_factor"], "RoPE is applied to the whole head")
    theta = fields.get("rope_theta")
    if kind == "default":
        return theta, None
    needed = ("factor",) if kind == "linear" else ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    for key in needed:
        if fields.get(key) is None:
            raise UserError(f"config.json {where} of type {kind} has no {key!r}")
    return theta, {"type": kind, **{k: fields[k] for k in needed}}


def rope(hf: dict, gemma: int) -> tuple[float, dict | None, float]:
    """(theta, scaling or None, local theta (0 = the same tables)) from the transformers 4 or 5 layout.

    Gemma 3 gives windowed layers their own unscaled base (v4: rope_local_base_freq; v5:
    rope_parameters per layer type)."""
    params = hf.get("rope_parameters") or {}
    per_type = isinstance(params.get("full_attention"), dict) or isinstance(params.get("sliding_attention"), dict)
    full = params.get("full_attention") or {} if per_type else params
    theta, scaling = _rope_fields(full, "rope_parameters.full_attention" if per_type else "rope_parameters")
    if scaling is None and hf.get("rope_scaling"):
        _, scaling = _rope_fields(hf["rope_scaling"], "rope_scaling")
    default_theta = 1_000_000.0 if gemma == 3 else 10000.0
    theta = float(theta if theta is not None else hf.get("rope_theta", default_theta))
    local = 0.0
    if gemma == 3:
        local_fields = params.get("sliding_attention") or {} if per_type else {}
        local_theta, local_scaling = _rope_fields(local_fields, "rope_parameters.sliding_attention")
        if local_scaling is not None:
            raise refuse("rope_parameters.sliding_attention.rope_type", local_scaling["type"], "windowed layers use unscaled RoPE")
        local = float(local_theta if local_theta is not None else hf.get("rope_local_base_freq", 10000.0))
    elif per_type:
        raise refuse("rope_parameters", sorted(params), "per-layer-type RoPE is read for gemma3_text only")
    return theta, scaling, local


def layer_types(hf: dict, mt: str, n_layers: int) -> tuple[str, ...]:
    """Each layer's attention, "full" or "sliding", as transformers 5 decides it for this family."""
    window = hf.get("sliding_window")
    if hf.get("layer_types"):
        kinds = list(hf["layer_types"])
        if len(kinds) != n_layers:
            raise UserError(f"config.json layer_types has {len(kinds)} entries for {n_layers} layers")
        for kind in kinds:
            if kind not in _LAYER_TYPES:
                raise refuse("layer_types", kind, f"supported layer types are {', '.join(_LAYER_TYPES)}")
        if mt in ("qwen2", "qwen3") and not hf.get("use_sliding_window"):
            return ("full",) * n_layers  # transformers drops the window: the layers attend fully
        return tuple(_LAYER_TYPES[k] for k in kinds)
    if mt == "mistral":
        return ("sliding" if window else "full",) * n_layers
    if mt in ("qwen2", "qwen3"):
        first = int(hf.get("max_window_layers", n_layers))
        return tuple("sliding" if hf.get("use_sliding_window") and window and i >= first else "full" for i in range(n_layers))
    if mt == "gemma2":
        return tuple("sliding" if (i + 1) % 2 else "full" for i in range(n_layers))
    if mt == "gemma3_text":
        pattern = int(hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern", 6)))
        return tuple("sliding" if (i + 1) % pattern else "full" for i in range(n_layers))
    return ("full",) * n_layers


def _check(hf: dict, mt: str, family: Family) -> None:
    """Refuse, by name, every field these families carry that our model does not compute."""
    # transformers 5 reads hidden_activation alone for Gemma (hidden_act is a leftover there).
    act = hf.get(family.activation_key) or ("gelu_pytorch_tanh" if family.gemma else "silu")
    if act not in (("gelu_pytorch_tanh", "gelu_tanh") if family.gemma else ("silu",)):
        raise refuse(family.activation_key, act, f"{mt} here uses {'GeGLU (tanh GELU)' if family.gemma else 'SwiGLU (silu)'}")
    if hf.get("mlp_bias"):
        raise refuse("mlp_bias", True, "our MLP has no biases")
    if hf.get("attention_bias") and not family.qkv_bias:
        raise refuse("attention_bias", True, f"{mt} attention with biases is not implemented (Qwen2-style q/k/v biases are)")
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise refuse("partial_rotary_factor", hf["partial_rotary_factor"], "RoPE is applied to the whole head")
    if hf.get("use_bidirectional_attention"):
        raise refuse("use_bidirectional_attention", True, "decoder-only (causal) models only")
    if not family.gemma:
        for key in ("attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar", "rope_local_base_freq"):
            if hf.get(key) is not None:
                raise refuse(key, hf[key], f"{mt} has no {key}; it belongs to Gemma 2/3")
    if mt == "llama" and hf.get("sliding_window"):
        raise refuse("sliding_window", hf["sliding_window"], "Llama has no sliding window (import Mistral as mistral)")
    for key in ("num_experts", "num_local_experts", "n_routed_experts"):
        if hf.get(key):
            raise refuse(key, hf[key], "mixture-of-experts models are not implemented")


def architecture(hf: dict, mt: str) -> dict:
    """Our model fields for one of FAMILIES' config.json (before overrides)."""
    family = FAMILIES[mt]
    _check(hf, mt, family)
    d = int(require(hf, "hidden_size"))
    heads = int(require(hf, "num_attention_heads"))
    n_layers = int(require(hf, "num_hidden_layers"))
    theta, scaling, local_theta = rope(hf, family.gemma)
    types = layer_types(hf, mt, n_layers)
    configured = hf.get("sliding_window", 4096 if family.gemma else None)  # transformers' Gemma default
    if "sliding" in types and not configured:
        raise UserError(f"config.json layer_types has sliding layers but sliding_window={configured!r}")
    window = int(configured) if "sliding" in types else 0
    return dict(
        family="llama", vocab_size=int(require(hf, "vocab_size")), d_model=d, n_layers=n_layers, n_heads=heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or heads), head_dim=int(hf.get("head_dim") or d // heads),
        d_ff=int(require(hf, "intermediate_size")), max_seq_len=int(require(hf, "max_position_embeddings")),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_theta=theta, rope_scaling=scaling,
        qkv_bias=family.qkv_bias, tie_embeddings=bool(hf.get("tie_word_embeddings", family.tie_default)),
        sliding_window=window, layer_types=types if window and len(set(types)) > 1 else (),
        rope_local_theta=local_theta if window else 0.0, qk_norm=family.qk_norm, norm_plus_one=bool(family.gemma),
        post_norms=family.gemma >= 2, mlp_activation="gelu_tanh" if family.gemma else "silu", embed_scale=bool(family.gemma),
        query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar") or 0.0),
        attn_softcap=float(hf.get("attn_logit_softcapping") or 0.0), final_softcap=float(hf.get("final_logit_softcapping") or 0.0),
    )


def _gemma_generation(m: ml_collections.ConfigDict) -> int:
    """2 or 3 when `m` is built like Gemma 2 / Gemma 3, -1 for a partial mix, 0 for none of it."""
    switches = (m.norm_plus_one, m.embed_scale, m.mlp_activation == "gelu_tanh", m.post_norms)
    if not any(switches):
        return 0
    return (3 if m.qk_norm else 2) if all(switches) else -1


def _windows(m: ml_collections.ConfigDict) -> tuple[str, ...]:
    if not m.sliding_window:
        return ("full",) * m.n_layers
    return tuple(m.layer_types) or ("sliding",) * m.n_layers


def inexpressible(m: ml_collections.ConfigDict, mt: str) -> str | None:
    """Why transformers' `mt` cannot express our llama-family model `m` exactly (None: it can)."""
    family = FAMILIES[mt]
    gemma = _gemma_generation(m)
    if family.gemma != gemma:
        names = {0: "Llama-style", -1: "a mix of Gemma and Llama styles", 2: "Gemma 2 style", 3: "Gemma 3 style"}
        return f"its norms, embeddings and MLP are {names[gemma]}"
    if family.qkv_bias != bool(m.qkv_bias):
        return "q/k/v biases differ (model.qkv_bias)"
    if family.qk_norm != bool(m.qk_norm):
        return "QK-norm differs (model.qk_norm)"
    if (m.attn_softcap or m.final_softcap) and not family.gemma:
        return "it has soft-capping (model.attn_softcap / final_softcap)"
    if m.query_pre_attn_scalar and not family.gemma:
        return "it scales queries by model.query_pre_attn_scalar"
    if m.rope_local_theta and family.gemma != 3:
        return "windowed layers have their own RoPE base (model.rope_local_theta)"
    types = _windows(m)
    if "sliding" in types:
        if mt == "llama" and m.sliding_window < m.max_seq_len:  # a window >= the context never applies
            return "it has a sliding window"
        if mt == "mistral" and set(types) != {"sliding"}:
            return "Mistral windows every layer, this model only some"
    elif mt in ("gemma2", "gemma3_text"):
        return f"{mt} always has sliding-window layers; this model has none"
    if m.rope_scaling.type == "linear" and family.gemma != 3:
        return "linear RoPE scaling is exported for gemma3_text only"
    return None


def default_model_type(m: ml_collections.ConfigDict) -> str:
    """The model_type that expresses `m` (a llama-family model section)."""
    for mt in ("gemma3_text", "gemma2", "qwen3", "qwen2", "llama", "mistral"):
        if inexpressible(m, mt) is None:
            return mt
    raise UserError(
        "this model has no Hugging Face equivalent (its switches match no family: "
        + "; ".join(f"{mt}: {inexpressible(m, mt)}" for mt in FAMILIES) + ")"
    )


def export_fields(m: ml_collections.ConfigDict, mt: str) -> dict:
    """config.json fields of family `mt` for `m` (transformers 4.43+ and 5 read them)."""
    family = FAMILIES[mt]
    head_dim = m.head_dim or m.d_model // m.n_heads
    scaling = None
    r = m.rope_scaling
    if r.type == "llama3":
        scaling = {"rope_type": "llama3", "factor": float(r.factor), "low_freq_factor": float(r.low_freq_factor),
                   "high_freq_factor": float(r.high_freq_factor), "original_max_position_embeddings": int(r.original_max_position)}
    elif r.type == "linear":
        scaling = {"rope_type": "linear", "factor": float(r.factor)}
    out = {"hidden_size": m.d_model, "intermediate_size": m.d_ff, "num_hidden_layers": m.n_layers,
           "num_attention_heads": m.n_heads, "num_key_value_heads": m.n_kv_heads, "head_dim": head_dim,
           "max_position_embeddings": m.max_seq_len, "rms_norm_eps": float(m.norm_eps),
           "rope_theta": float(m.rope_theta), "rope_scaling": scaling, "attention_dropout": 0.0,
           "attention_bias": bool(m.qkv_bias) if mt == "qwen2" else False}
    out[family.activation_key] = "gelu_pytorch_tanh" if family.gemma else "silu"
    types = _windows(m)
    window = int(m.sliding_window) if "sliding" in types else None
    if mt == "llama":
        out.update(mlp_bias=False)
    elif mt == "mistral":
        out.update(sliding_window=window)
    elif mt in ("qwen2", "qwen3"):
        first = types.index("sliding") if window else m.n_layers
        if window and any(t != "sliding" for t in types[first:]):
            raise UserError(f"{mt} windows the layers from max_window_layers on; this model's layer types {types} do not fit that")
        out.update(use_sliding_window=window is not None, sliding_window=window, max_window_layers=first)
    if family.gemma:
        scalar = float(m.query_pre_attn_scalar or head_dim)
        out.update(sliding_window=window, query_pre_attn_scalar=int(scalar) if scalar.is_integer() else scalar,
                   attn_logit_softcapping=float(m.attn_softcap) or None, final_logit_softcapping=float(m.final_softcap) or None,
                   layer_types=[f"{t}_attention" for t in types], cache_implementation="hybrid")
    if family.gemma == 3:
        out.update(rope_local_base_freq=float(m.rope_local_theta or m.rope_theta), sliding_window_pattern=_pattern(types))
    return out


def _pattern(types: tuple[str, ...]) -> int:
    """transformers 4's sliding_window_pattern when the layer types follow one (else 0: v5 reads layer_types)."""
    for pattern in range(1, len(types) + 1):
        if types == tuple("sliding" if (i + 1) % pattern else "full" for i in range(len(types))):
            return pattern
    return 0
