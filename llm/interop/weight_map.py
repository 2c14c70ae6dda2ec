"""Tensor names and layouts: Hugging Face (Llama / Mistral / Qwen2 / Qwen3 / Gemma 2 / Gemma 3,
GPT-2) <-> our param tree.

Each `Rule` ties one Hugging Face tensor to one or more of our parameters (GPT-2's fused
c_attn feeds q, k and v) with a pure numpy transform each way. Our paths use the unscanned
layout, ("blocks", i, "attn", "q", "kernel"); the importer and exporter stack or slice the
layer axis for scan_layers=True. Torch Linear weights are (out, in); our kernels are
(in, *out) with the head structure kept, e.g. q: (d_model, heads, head_dim). GPT-2's Conv1D
weights are already (in, out). The vocabulary is padded to the model's padded size on the way
in and sliced back on the way out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from llm.model.spec import ModelSpec

Path = tuple  # e.g. ("blocks", 0, "attn", "q", "kernel")


@dataclass(frozen=True)
class Rule:
    hf: str
    hf_shape: tuple[int, ...]
    ours: tuple[Path, ...]
    to_ours: Callable[[np.ndarray], tuple[np.ndarray, ...]] = field(compare=False)
    to_hf: Callable[[Sequence[np.ndarray]], np.ndarray] = field(compare=False)

    @property
    def layer(self) -> int | None:
        """The block index for per-layer rules, None for embeddings / final norm / head."""
        first = self.ours[0]
        return first[1] if first[0] == "blocks" else None

    @property
    def kind(self) -> tuple:
        """Same for the same rule across layers: our paths without the layer index."""
        return tuple(p[2:] if p[0] == "blocks" else p for p in self.ours)


def _identity(hf: str, shape, ours: Path) -> Rule:
    return Rule(hf, tuple(shape), (ours,), lambda w: (w,), lambda ks: ks[0])


def _reshape(hf: str, ours: Path, our_shape: tuple[int, ...]) -> Rule:
    """A flat Hugging Face bias <-> a head-structured bias, e.g. (H*hd,) <-> (H, hd)."""
    size = int(np.prod(our_shape))
    return Rule(hf, (size,), (ours,), lambda w: (w.reshape(our_shape),), lambda ks: ks[0].reshape(-1))


def _linear_in(hf: str, ours: Path, d_in: int, out_shape: tuple[int, ...]) -> Rule:
    """torch Linear (prod(out), in) <-> kernel (in, *out)."""
    size = int(np.prod(out_shape))
    return Rule(
        hf, (size, d_in), (ours,),
        lambda w: (w.T.reshape(d_in, *out_shape),),
        lambda ks: ks[0].reshape(d_in, size).T,
    )


def _linear_out(hf: str, ours: Path, in_shape: tuple[int, ...], d_out: int) -> Rule:
    """torch Linear (out, prod(in)) <-> kernel (*in, out)."""
    size = int(np.prod(in_shape))
    return Rule(
        hf, (d_out, size), (ours,),
        lambda w: (w.T.reshape(*in_shape, d_out),),
        lambda ks: ks[0].reshape(size, d_out).T,
    )


def pad_rows(w: np.ndarray, rows: int) -> np.ndarray:
    if w.shape[0] == rows:
        return w
    out = np.zeros((rows, *w.shape[1:]), dtype=w.dtype)
    out[: w.shape[0]] = w
    return out


def _embedding(hf: str, ours: Path, vocab: int, padded: int, d: int) -> Rule:
    return Rule(hf, (vocab, d), (ours,), lambda w: (pad_rows(w, padded),), lambda ks: ks[0][:vocab])


def _lm_head(vocab: int, padded: int, d: int) -> Rule:
    """lm_head (vocab, d) <-> head (d, padded vocab)."""
    return Rule(
        "lm_head.weight", (vocab, d), (("head",),),
        lambda w: (pad_rows(w, padded).T,),
        lambda ks: ks[0][:, :vocab].T,
    )


def llama_rules(spec: ModelSpec) -> list[Rule]:
    """Llama, Mistral, Qwen2 (q/k/v biases), Qwen3 (q/k norms) and Gemma 2/3 (sandwich norms:
    their post_attention_layernorm is the attention's output norm, pre_feedforward_layernorm
    the MLP's input norm)."""
    d, h, kv, hd, f = spec.d_model, spec.n_heads, spec.n_kv_heads, spec.head_dim, spec.d_ff
    rules = [_embedding("model.embed_tokens.weight", ("embed",), spec.vocab_size, spec.padded_vocab, d)]
    for i in range(spec.n_layers):
        p, b = f"model.layers.{i}.", ("blocks", i)
        rules += [
            _identity(p + "input_layernorm.weight", (d,), (*b, "attn_norm", "scale")),
            _linear_in(p + "self_attn.q_proj.weight", (*b, "attn", "q", "kernel"), d, (h, hd)),
            _linear_in(p + "self_attn.k_proj.weight", (*b, "attn", "k", "kernel"), d, (kv, hd)),
            _linear_in(p + "self_attn.v_proj.weight", (*b, "attn", "v", "kernel"), d, (kv, hd)),
        ]
        if spec.qkv_bias:
            rules += [
                _reshape(p + "self_attn.q_proj.bias", (*b, "attn", "q", "bias"), (h, hd)),
                _reshape(p + "self_attn.k_proj.bias", (*b, "attn", "k", "bias"), (kv, hd)),
                _reshape(p + "self_attn.v_proj.bias", (*b, "attn", "v", "bias"), (kv, hd)),
            ]
        if spec.qk_norm:
            rules += [
                _identity(p + "self_attn.q_norm.weight", (hd,), (*b, "attn", "q_norm", "scale")),
                _identity(p + "self_attn.k_norm.weight", (hd,), (*b, "attn", "k_norm", "scale")),
            ]
        if spec.post_norms:
            rules += [
                _identity(p + "post_attention_layernorm.weight", (d,), (*b, "attn_post_norm", "scale")),
                _identity(p + "pre_feedforward_layernorm.weight", (d,), (*b, "mlp_norm", "scale")),
                _identity(p + "post_feedforward_layernorm.weight", (d,), (*b, "mlp_post_norm", "scale")),
            ]
        else:
            rules.append(_identity(p + "post_attention_layernorm.weight", (d,), (*b, "mlp_norm", "scale")))
        rules += [
            _linear_out(p + "self_attn.o_proj.weight", (*b, "attn", "o", "kernel"), (h, hd), d),
            _linear_in(p + "mlp.gate_proj.weight", (*b, "mlp", "gate", "kernel"), d, (f,)),
            _linear_in(p + "mlp.up_proj.weight", (*b, "mlp", "up", "kernel"), d, (f,)),
            _linear_out(p + "mlp.down_proj.weight", (*b, "mlp", "down", "kernel"), (f,), d),
        ]
    rules.append(_identity("model.norm.weight", (d,), ("final_norm", "scale")))
    if not spec.tie_embeddings:
        rules.append(_lm_head(spec.vocab_size, spec.padded_vocab, d))
    return rules


def _split_qkv(b: Path, what: str, shape_of_one: tuple[int, ...], hf: str, hf_shape: tuple[int, ...], axis: int) -> Rule:
    """GPT-2's fused c_attn (q|k|v along its last axis) <-> three head-structured params."""
    ours = tuple((*b, "attn", name, what) for name in ("q", "k", "v"))

    def to_ours(w):
        return tuple(part.reshape(shape_of_one) for part in np.split(w, 3, axis=axis))

    def to_hf(ks):
        flat = [k.reshape(hf_shape[:-1] + (hf_shape[-1] // 3,)) for k in ks]
        return np.concatenate(flat, axis=axis)

    return Rule(hf, hf_shape, ours, to_ours, to_hf)


def gpt2_rules(spec: ModelSpec, prefix: str = "transformer.") -> list[Rule]:
    d, h, hd, f = spec.d_model, spec.n_heads, spec.head_dim, spec.d_ff
    rules = [
        _embedding(prefix + "wte.weight", ("embed",), spec.vocab_size, spec.padded_vocab, d),
        _identity(prefix + "wpe.weight", (spec.max_seq_len, d), ("pos_embed",)),
    ]
    for i in range(spec.n_layers):
        p, b = f"{prefix}h.{i}.", ("blocks", i)
        rules += [
            _identity(p + "ln_1.weight", (d,), (*b, "attn_norm", "scale")),
            _identity(p + "ln_1.bias", (d,), (*b, "attn_norm", "bias")),
            _split_qkv(b, "kernel", (d, h, hd), p + "attn.c_attn.weight", (d, 3 * h * hd), axis=1),
            _split_qkv(b, "bias", (h, hd), p + "attn.c_attn.bias", (3 * h * hd,), axis=0),
            Rule(p + "attn.c_proj.weight", (h * hd, d), ((*b, "attn", "o", "kernel"),),
                 lambda w: (w.reshape(h, hd, d),), lambda ks: ks[0].reshape(h * hd, d)),
            _identity(p + "attn.c_proj.bias", (d,), (*b, "attn", "o", "bias")),
            _identity(p + "ln_2.weight", (d,), (*b, "mlp_norm", "scale")),
            _identity(p + "ln_2.bias", (d,), (*b, "mlp_norm", "bias")),
            _identity(p + "mlp.c_fc.weight", (d, f), (*b, "mlp", "up", "kernel")),
            _identity(p + "mlp.c_fc.bias", (f,), (*b, "mlp", "up", "bias")),
            _identity(p + "mlp.c_proj.weight", (f, d), (*b, "mlp", "down", "kernel")),
            _identity(p + "mlp.c_proj.bias", (d,), (*b, "mlp", "down", "bias")),
        ]
    rules += [
        _identity(prefix + "ln_f.weight", (d,), ("final_norm", "scale")),
        _identity(prefix + "ln_f.bias", (d,), ("final_norm", "bias")),
    ]
    if not spec.tie_embeddings:
        rules.append(_lm_head(spec.vocab_size, spec.padded_vocab, d))
    return rules


def weight_rules(spec: ModelSpec, hf_names: Sequence[str] | None = None) -> list[Rule]:
    """The rules for this model; `hf_names` (when importing) picks GPT-2's name prefix."""
    if spec.is_gpt2:
        bare = hf_names is not None and "wte.weight" in hf_names
        return gpt2_rules(spec, prefix="" if bare else "transformer.")
    return llama_rules(spec)


# Non-parameter buffers some checkpoints carry (GPT-2's causal-mask buffers, old RoPE caches).
_BUFFERS = re.compile(r"(.*\.rotary_emb\.inv_freq|(transformer\.)?h\.\d+\.attn\.(bias|masked_bias))$")


def ignorable(name: str, spec: ModelSpec) -> bool:
    """Tensors a faithful import may skip: buffers, lm_head of a tied model (transformers
    ties it to the embedding too), and a sequence classifier's head (llm.interop.hf_reward
    reads it)."""
    return bool(_BUFFERS.match(name)) or (spec.tie_embeddings and name == "lm_head.weight") or name == "score.weight"
