"""ModelSpec: the frozen, hashable model description the modules are built from.

The config is mutable and carries training keys; the model only sees this.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import ml_collections

from llm.cpu.matmul import cpu_matmul_route
from llm.errors import ConfigError

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
    rope_scaling: tuple  # (), ("llama3", factor, low, high, original_max_position) or ("linear", factor)
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
    # Family features (Qwen3, Gemma 2/3, windowed Mistral); see config.model in llm.config.base.
    layer_windows: tuple = ()  # per layer: keys a query sees (0 = all earlier ones); () = all 0
    rope_local_theta: float = 0.0  # RoPE base of windowed layers (0 = the full layers' tables)
    qk_norm: bool = False
    norm_plus_one: bool = False
    post_norms: bool = False
    mlp_activation: str = "silu"
    embed_scale: bool = False
    query_pre_attn_scalar: float = 0.0
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    # CPU bf16 linear layers (llm.cpu.matmul): "" = plain dots, "xla" = f32-accumulating XLA
    # dots, "gemm" = and the FFI kernel for weight gradients (one CPU device with a bf16 engine).
    cpu_matmul: str = ""

    @property
    def is_gpt2(self) -> bool:
        return self.family == "gpt2"

    @property
    def windows(self) -> tuple[int, ...]:
        """Every layer's window (0 = none)."""
        return self.layer_windows or (0,) * self.n_layers

    @property
    def attention_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5


def layer_windows(m: ml_collections.ConfigDict) -> tuple[int, ...]:
    """Per-layer windows from model.sliding_window and model.layer_types; () when no layer has one."""
    if not m.sliding_window:
        return ()
    types = tuple(m.layer_types) or ("sliding",) * m.n_layers
    windows = tuple(int(m.sliding_window) if t == "sliding" else 0 for t in types)
    return windows if any(windows) else ()


def resolve_compute_dtype(name: str, platform: str | None = None) -> jnp.dtype:
    """`auto` means bf16 where it is fast: GPU/TPU, and CPUs whose bf16 matmul beats f32 (a bf16
    matrix engine: AMX, AVX-512 BF16; llm.cpu.precision decides, once per machine); f32 on
    other CPUs, where bf16 only adds conversions."""
    if name == "auto":
        platform = platform or jax.default_backend()
        if platform == "cpu":
            from llm.cpu.precision import cpu_auto_compute_dtype

            return cpu_auto_compute_dtype()
        return jnp.bfloat16
    return _DTYPES[name]


def padded_vocab_size(vocab_size: int, multiple: int, shards: int = 1) -> int:
    """Round the vocabulary up so it splits evenly over the vocab shards (and tiles well)."""
    step = max(multiple, 1) * shards
    return -(-vocab_size // step) * step


def resolve_attention_impl(
    m: ml_collections.ConfigDict, platform: str | None = None, compute_dtype=jnp.bfloat16
) -> str:
    """model.attention_impl with `auto` resolved for the platform: cuDNN on GPU, splash on TPU
    where the kernel takes the model (head_dim a multiple of 128, no soft-cap, no windows; else
    xla), blocked on CPU. Splash named outright off TPU is refused (a TPU kernel), and so is cuDNN
    off GPU. On the GPU the run is on, cuDNN is asked whether it takes the model's attention
    (llm.model.cudnn): `auto` falls back to xla with a warning when it does not, `cudnn` stops with
    cuDNN's reason."""
    platform = platform or jax.default_backend()
    impl = m.attention_impl
    head_dim = m.head_dim or m.d_model // m.n_heads
    if impl == "auto":
        if platform == "gpu":
            if m.attn_softcap:
                return "xla"
            problem = _cudnn_problem(m, platform, head_dim, compute_dtype)
            if problem:
                warnings.warn(f"model.attention_impl=auto: cuDNN attention is not available ({problem}); using xla", stacklevel=2)
                return "xla"
            return "cudnn"
        if platform == "tpu":
            return "splash" if head_dim % 128 == 0 and not m.attn_softcap and not m.sliding_window else "xla"
        return "blocked"
    if impl == "splash" and platform != "tpu":
        raise ConfigError(f"model.attention_impl=splash is a TPU (Pallas) kernel and this run is on {platform}; "
                          f"use auto, blocked or xla here")
    if impl == "cudnn":
        if platform != "gpu":
            raise ConfigError(f"model.attention_impl=cudnn needs an NVIDIA GPU with cuDNN and this run is on {platform}; "
                              f"use auto (blocked on CPU, splash on TPU) or xla")
        problem = _cudnn_problem(m, platform, head_dim, compute_dtype)
        if problem:
            raise ConfigError(f"model.attention_impl=cudnn: cuDNN cannot run this model's attention (head_dim {head_dim}, "
                              f"{jnp.dtype(compute_dtype).name}): {problem}; use auto or xla")
    return impl


def _cudnn_problem(m: ml_collections.ConfigDict, platform: str, head_dim: int, compute_dtype) -> str | None:
    """cuDNN's refusal on the GPU this process runs on; None when it takes the attention, or when
    the spec is for another machine's GPU (planning, compiling) and this one cannot be asked."""
    if platform != jax.default_backend():
        return None
    from llm.model.cudnn import cudnn_attention_problem

    return cudnn_attention_problem(head_dim, m.n_heads, m.n_kv_heads, jnp.dtype(compute_dtype).name)


def model_spec(
    config: ml_collections.ConfigDict, vocab_shards: int = 1, platform: str | None = None, devices: int = 0
) -> ModelSpec:
    """The model's static description; `platform` (default: jax's) and `devices` (the mesh's
    device count, 0 = unknown) decide the compute dtype and the CPU matmul route."""
    m = config.model
    scaling = ()
    r = m.rope_scaling
    if r.type == "llama3":
        scaling = ("llama3", float(r.factor), float(r.low_freq_factor), float(r.high_freq_factor), int(r.original_max_position))
    elif r.type == "linear":
        scaling = ("linear", float(r.factor))
    compute = resolve_compute_dtype(config.precision.compute, platform)
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
        attention_impl=resolve_attention_impl(m, platform, compute),
        param_dtype=_DTYPES[config.precision.params],
        compute_dtype=compute,
        loss_chunk=int(m.loss_chunk),
        attention_block=int(m.attention_block),
        layer_windows=layer_windows(m),
        rope_local_theta=float(m.rope_local_theta),
        qk_norm=bool(m.qk_norm),
        norm_plus_one=bool(m.norm_plus_one),
        post_norms=bool(m.post_norms),
        mlp_activation=m.mlp_activation,
        embed_scale=bool(m.embed_scale),
        query_pre_attn_scalar=float(m.query_pre_attn_scalar),
        attn_softcap=float(m.attn_softcap),
        final_softcap=float(m.final_softcap),
        cpu_matmul=cpu_matmul_route(platform, compute, devices, bool(m.cpu_gemm)),
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
        attn += 2 * hd if spec.qk_norm else 0
        mlp = 3 * d * spec.d_ff
        norms = (4 if spec.post_norms else 2) * d
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
