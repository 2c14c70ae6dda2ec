"""ModelSpec: the frozen, hashable model description the modules are built from.

The config is mutable and carries training keys; the model only sees this.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    family: str
    vocab_size: int  # the tokenizer's vocabulary
    padded_vocab: int  # rows in the embedding / columns in the head
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    max_seq_len: int
    norm_eps: float
    rope_theta: float
    rope_scaling: tuple  # () or ("llama3", factor, low, high, original_max_position)
    qkv_bias: bool
    tie_embeddings: bool
    init_std: float
    scan_layers: bool
    remat: str
    attention_impl: str
    param_dtype: jnp.dtype
    compute_dtype: jnp.dtype
    loss_chunk: int = 0  # positions per logits + loss chunk in training (0 = all at once)
    attention_block: int = 64  # query positions per block when attention_impl is "blocked"

    @property
    def is_gpt2(self) -> bool:
        return self.family == "gpt2"


def resolve_compute_dtype(name: str, platform: str | None = None) -> jnp.dtype:
    """`auto` means bf16 where it is fast (GPU/TPU) and f32 on CPU, where bf16 matmuls are slow."""
    if name == "auto":
        platform = platform or jax.default_backend()
        return jnp.float32 if platform == "cpu" else jnp.bfloat16
    return _DTYPES[name]


def padded_vocab_size(vocab_size: int, multiple: int, shards: int = 1) -> int:
    """Round the vocabulary up so it splits evenly over the vocab shards (and tiles well)."""
    step = max(multiple, 1) * shards
    return -(-vocab_size // step) * step


def model_spec(config: ml_collections.ConfigDict, vocab_shards: int = 1, platform: str | None = None) -> ModelSpec:
    m = config.model
    scaling = ()
    if m.rope_scaling.type == "llama3":
        r = m.rope_scaling
        scaling = ("llama3", float(r.factor), float(r.low_freq_factor), float(r.high_freq_factor), int(r.original_max_position))
    return ModelSpec(
        family=m.family,
        vocab_size=m.vocab_size,
        padded_vocab=padded_vocab_size(m.vocab_size, m.vocab_multiple, vocab_shards),
        d_model=m.d_model,
        n_layers=m.n_layers,
        n_heads=m.n_heads,
        n_kv_heads=m.n_kv_heads,
        head_dim=m.head_dim or m.d_model // m.n_heads,
        d_ff=m.d_ff,
        max_seq_len=m.max_seq_len,
        norm_eps=float(m.norm_eps),
        rope_theta=float(m.rope_theta),
        rope_scaling=scaling,
        qkv_bias=m.qkv_bias,
        tie_embeddings=m.tie_embeddings,
        init_std=float(m.init_std),
        scan_layers=m.scan_layers,
        remat=m.remat,
        attention_impl=m.attention_impl,
        param_dtype=_DTYPES[config.precision.params],
        compute_dtype=resolve_compute_dtype(config.precision.compute, platform),
        loss_chunk=int(m.loss_chunk),
        attention_block=int(m.attention_block),
    )


def param_count(spec: ModelSpec) -> int:
    """Analytic parameter count; the tests check the built model against it."""
    d, h, hd = spec.d_model, spec.n_heads, spec.head_dim
    kv = spec.n_kv_heads
    attn = d * h * hd + 2 * d * kv * hd + h * hd * d
    if spec.is_gpt2:
        attn += h * hd + 2 * kv * hd + d  # q, k, v and output biases
        mlp = 2 * d * spec.d_ff + spec.d_ff + d
        norms = 2 * 2 * d
        final_norm = 2 * d
        positions = spec.max_seq_len * d
    else:
        attn += (h * hd + 2 * kv * hd) if spec.qkv_bias else 0
        mlp = 3 * d * spec.d_ff
        norms = 2 * d
        final_norm = d
        positions = 0
    embed = spec.padded_vocab * d
    head = 0 if spec.tie_embeddings else spec.padded_vocab * d
    return embed + positions + spec.n_layers * (attn + mlp + norms) + final_norm + head


def non_embedding_params(spec: ModelSpec) -> int:
    """Parameters outside the token/position embeddings and the LM head (for FLOP counts)."""
    d = spec.d_model
    embed = spec.padded_vocab * d + (spec.max_seq_len * d if spec.is_gpt2 else 0)
    head = 0 if spec.tie_embeddings else spec.padded_vocab * d
    return param_count(spec) - embed - head
