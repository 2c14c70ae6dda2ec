"""Parameterised building blocks; every parameter carries its logical axis names."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from llm.model.kernel import matmul


def param(rngs: nnx.Rngs, init, shape: Sequence[int], axes: Sequence[str], dtype) -> nnx.Param:
    """A Param annotated with logical axes (read by llm.parallel to place it on the mesh)."""
    if len(shape) != len(axes):
        raise ValueError(f"shape {tuple(shape)} and logical axes {tuple(axes)} differ in rank")
    return nnx.Param(init(rngs.params(), tuple(shape), dtype), logical_axes=tuple(axes))


class Dense(nnx.Module):
    """A linear map over named input dims to named output dims, as one 2-D GEMM.

    Kernels keep their natural head structure (e.g. (embed, heads, kv)) so tensor-parallel
    rules can split heads without reshapes. The kernel is a plain array or a Kernel
    (llm.model.kernel) that multiplies itself.

    A low-rank adapter may sit beside the kernel (LoRA): a parameter-tree transform
    (llm.peft.lora) sets `lora_a` (*in, r) and `lora_b` (r, *out), `lora_scale`, and with
    dropout `lora_dropout_key` / `lora_dropout_rate` (fed per step). The class attributes below
    are those slots' defaults: no adapter.
    """

    matmul_route = ""  # ModelSpec.cpu_matmul, set by the Decoder on CPU bf16 models (llm.cpu.matmul)
    lora_a = None
    lora_b = None
    lora_scale = 0.0
    lora_dropout_key = None
    lora_dropout_rate = None

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        in_axes: Sequence[str],
        out_axes: Sequence[str],
        *,
        use_bias: bool,
        std: float,
        dtype,
        rngs: nnx.Rngs,
    ):
        self.n_in = len(in_shape)
        self.kernel = param(
            rngs, nnx.initializers.normal(std), (*in_shape, *out_shape), (*in_axes, *out_axes), dtype
        )
        self.bias = param(rngs, nnx.initializers.zeros, out_shape, out_axes, dtype) if use_bias else None

    def __call__(self, x: jax.Array, compute_dtype) -> jax.Array:
        y = matmul(self.kernel.get_value(), x, self.n_in, compute_dtype, self.matmul_route)
        if self.lora_a is not None:
            y = y + self._low_rank(x, compute_dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(compute_dtype)
        return y

    def _low_rank(self, x: jax.Array, compute_dtype) -> jax.Array:
        """(dropout(x) A) (scale B): a low-rank term beside the kernel, never folded into it, so a
        frozen kernel needs no weight-gradient matmul.

        Computed as 2-D matmuls on flattened dims with the scale folded into the small B: on
        CPU this halves the adapter's cost against einsums over the batch / head dims."""
        x = x.astype(compute_dtype)
        if self.lora_dropout_key is not None:
            keep = 1.0 - self.lora_dropout_rate[...].astype(jnp.float32)
            mask = jax.random.bernoulli(jax.random.wrap_key_data(self.lora_dropout_key[...]), keep, x.shape)
            x = jnp.where(mask, x / keep.astype(compute_dtype), 0).astype(compute_dtype)
        a = self.lora_a[...].astype(compute_dtype)
        b = self.lora_b[...].astype(compute_dtype)
        rank = a.shape[-1]
        in_shape, out_shape = a.shape[:-1], b.shape[1:]
        batch = x.shape[: x.ndim - len(in_shape)]
        xa = x.reshape(-1, a.size // rank) @ a.reshape(-1, rank)
        y = xa @ (self.lora_scale * b).reshape(rank, -1)
        return y.reshape(*batch, *out_shape)


def kernel_input_dims(module: nnx.Module) -> dict[tuple, int]:
    """Path of every Dense kernel in module (the module's path + ("kernel",), as in its params
    tree) -> the kernel's number of input dims."""
    return {(*path, "kernel"): m.n_in for path, m in nnx.iter_modules(module) if isinstance(m, Dense)}


class RMSNorm(nnx.Module):
    """RMSNorm over the last axis. plus_one (Gemma): scales by (1 + weight), the weight starting
    at 0, as Gemma checkpoints store it."""

    def __init__(self, dim: int, eps: float, dtype, rngs: nnx.Rngs, plus_one: bool = False):
        self.eps = eps
        self.plus_one = plus_one
        init = nnx.initializers.zeros if plus_one else nnx.initializers.ones
        self.scale = param(rngs, init, (dim,), ("norm",), dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        scale = self.scale[...].astype(jnp.float32)
        return (y * (1.0 + scale if self.plus_one else scale)).astype(x.dtype)


class LayerNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, dtype, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = param(rngs, nnx.initializers.ones, (dim,), ("norm",), dtype)
        self.bias = param(rngs, nnx.initializers.zeros, (dim,), ("norm",), dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(x.dtype)


def make_norm(family: str, dim: int, eps: float, dtype, rngs: nnx.Rngs, plus_one: bool = False) -> nnx.Module:
    return LayerNorm(dim, eps, dtype, rngs) if family == "gpt2" else RMSNorm(dim, eps, dtype, rngs, plus_one)


def softcap(x: jax.Array, cap: float) -> jax.Array:
    """cap * tanh(x / cap) (Gemma 2's attention and final-logit soft-capping); x itself when cap is 0."""
    return x if not cap else jnp.tanh(x / cap) * cap
