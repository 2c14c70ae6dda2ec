"""Checks a config before anything is built, so mistakes fail in one line, not in XLA."""

from __future__ import annotations

import ml_collections

from llm.errors import ConfigError
from llm.parallel.mesh import MESH_AXES

_CHOICES = {
    "model.family": ("llama", "gpt2"),
    "model.remat": ("none", "full", "save_matmul", "save_dot_except_mlpwi", "save_dot_with_context_except_mlp",
                    "save_dot_except_mlp", "save_qkv_proj", "save_out_proj"),  # llm.model.decoder.REMAT_POLICIES
    "model.attention_impl": ("xla", "cudnn", "blocked", "splash", "auto"),
    "model.rope_scaling.type": ("", "llama3", "linear"),
    "model.mlp_activation": ("silu", "gelu_tanh"),
    "precision.params": ("float32", "bfloat16"),
    "precision.compute": ("auto", "float32", "bfloat16"),
    "precision.optimizer_state": ("float32", "bfloat16"),
    "data.source": ("text", "jsonl", "parquet", "arrayrecord", "tfds", "hf", "synthetic"),
    "data.packing": ("first_fit", "concat"),
    "optim.decay": ("cosine", "linear", "constant"),
    "train.nan_policy": ("stop", "skip"),
    "eval.early_stop_mode": ("auto", "max", "min"),
}


def _get(config: ml_collections.ConfigDict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def _validate_family_features(m: ml_collections.ConfigDict) -> None:
    """Sliding windows, soft-caps and the Qwen3 / Gemma switches."""
    if m.sliding_window < 0:
        raise ConfigError(f"model.sliding_window={m.sliding_window} must be >= 0 (0 = no window)")
    types = tuple(m.layer_types)
    if types:
        if len(types) != m.n_layers:
            raise ConfigError(f"model.layer_types has {len(types)} entries but model.n_layers={m.n_layers}; give one per layer")
        bad = [t for t in types if t not in ("full", "sliding")]
        if bad:
            raise ConfigError(f"model.layer_types holds {bad[0]!r}; each entry is 'full' or 'sliding'")
        if "sliding" in types and not m.sliding_window:
            raise ConfigError("model.layer_types has 'sliding' layers but model.sliding_window=0; set the window size")
    for key in ("attn_softcap", "final_softcap", "query_pre_attn_scalar", "rope_local_theta"):
        if m[key] < 0:
            raise ConfigError(f"model.{key}={m[key]} must be >= 0 (0 = off)")
    if m.family == "gpt2":
        on = [k for k in ("qk_norm", "norm_plus_one", "post_norms", "embed_scale", "sliding_window", "attn_softcap", "final_softcap") if m[k]]
        if on or m.mlp_activation != "silu" or tuple(m.layer_types):
            raise ConfigError(f"model.family=gpt2 does not take model.{(on or ['mlp_activation'])[0]}; these options are for the llama family")
    if m.attn_softcap and m.attention_impl == "cudnn":
        raise ConfigError("model.attn_softcap needs attention_impl=xla or blocked; cuDNN attention has no logit soft-capping")


def _validate_splash(config: ml_collections.ConfigDict) -> None:
    """Shapes and options the splash kernel cannot take, in one line before anything is built."""
    m = config.model
    if m.attention_impl != "splash":
        return
    from llm.model.splash import check_splash_shape, splash_block

    if m.attn_softcap or m.sliding_window:
        raise ConfigError("model.attention_impl=splash takes neither attn_softcap nor sliding_window here; use xla or blocked")
    seq_len = config.data.seq_len
    check_splash_shape(m.head_dim or m.d_model // m.n_heads, seq_len, splash_block(m.attention_block, seq_len))
    if config.mesh.get("sequence", 1) > 1:
        raise ConfigError("model.attention_impl=splash does not split keys over mesh.sequence; use attention_impl=xla "
                          "with context parallelism")


def validate_config(config: ml_collections.ConfigDict) -> None:
    for dotted, allowed in _CHOICES.items():
        value = _get(config, dotted)
        if value not in allowed:
            raise ConfigError(f"{dotted}={value!r} is not one of {', '.join(map(repr, allowed))}")
    m = config.model
    for key in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
        if m[key] <= 0:
            raise ConfigError(f"model.{key}={m[key]} must be positive")
    if m.n_heads % m.n_kv_heads:
        raise ConfigError(
            f"model.n_heads={m.n_heads} is not a multiple of model.n_kv_heads={m.n_kv_heads}; "
            "pick n_kv_heads that divides n_heads"
        )
    if m.head_dim == 0 and m.d_model % m.n_heads:
        raise ConfigError(f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}; set model.head_dim")
    if config.data.seq_len > m.max_seq_len:
        raise ConfigError(
            f"data.seq_len={config.data.seq_len} exceeds model.max_seq_len={m.max_seq_len}; "
            "lower data.seq_len or raise model.max_seq_len"
        )
    if m.loss_chunk < 0 or (m.loss_chunk and config.data.seq_len % m.loss_chunk):
        raise ConfigError(
            f"model.loss_chunk={m.loss_chunk} must be 0 (off) or divide data.seq_len={config.data.seq_len}; "
            "pick a divisor such as 128"
        )
    if m.attention_block < 1:
        raise ConfigError(f"model.attention_block={m.attention_block} must be >= 1 (query positions per block); try 64")
    if m.attention_impl == "cudnn" and config.data.seq_len % 2:
        raise ConfigError(f"model.attention_impl=cudnn trains with the packing bias only on an even data.seq_len "
                          f"(cuDNN's rule), not {config.data.seq_len}; use an even length or attention_impl=xla")
    _validate_family_features(m)
    if m.family == "gpt2" and m.n_kv_heads != m.n_heads:
        raise ConfigError(f"gpt2 uses full multi-head attention; set model.n_kv_heads={m.n_heads}")
    t = config.train
    if t.steps < 0 or t.grad_accum < 1 or t.log_every < 1:
        raise ConfigError("train.steps must be >= 0, train.grad_accum and train.log_every >= 1")
    if config.data.batch_size % t.grad_accum:
        raise ConfigError(
            f"data.batch_size={config.data.batch_size} is not divisible by train.grad_accum={t.grad_accum}"
        )
    _validate_eval(config.eval)
    _validate_splash(config)
    axes = MESH_AXES
    for axis in axes:
        size = config.mesh.get(axis, 1)
        if size == 0 or size < -1:
            raise ConfigError(f"mesh.{axis}={size} must be a positive size or -1 (the rest of the devices)")
    if sum(config.mesh.get(a, 1) == -1 for a in axes) > 1:
        raise ConfigError("only one of mesh.data, mesh.fsdp, mesh.tensor, mesh.sequence may be -1")
    sequence = config.mesh.get("sequence", 1)
    if sequence > 1 and config.data.seq_len % sequence:
        raise ConfigError(
            f"data.seq_len={config.data.seq_len} is not divisible by mesh.sequence={sequence}: each device holds an "
            f"equal slice of every sequence; use a multiple of {sequence} or another mesh.sequence"
        )
    for name, mesh_axes in config.mesh.rules.items():
        for axis in mesh_axes:
            if axis not in axes:
                raise ConfigError(f"mesh.rules.{name} names mesh axis {axis!r}; use data, fsdp, tensor or sequence")


def _validate_eval(e: ml_collections.ConfigDict) -> None:
    """In-training task eval: both halves set or neither (a half-set one would be silently off)."""
    if e.every_steps < 0 or e.batch_size < 1 or e.limit < 0 or e.num_fewshot < -1 or e.patience < 0:
        raise ConfigError(
            "eval.every_steps, eval.limit and eval.patience must be >= 0, eval.batch_size >= 1, "
            "eval.num_fewshot >= 0 or -1 (the task's own)"
        )
    if e.tasks.strip() and not e.every_steps:
        raise ConfigError(f"eval.tasks={e.tasks!r} is set but eval.every_steps=0; set eval.every_steps=N to run them every N steps")
    if e.every_steps and not e.tasks.strip():
        raise ConfigError(f"eval.every_steps={e.every_steps} but eval.tasks is empty; set eval.tasks=builtin or task YAML paths")
