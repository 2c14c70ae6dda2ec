"""Parameterised building blocks; every parameter carries its logical axis names."""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def param(rngs: nnx.Rngs, init, shape: Sequence[int], axes: Sequence[str], dtype) -> nnx.Param:
    """A Param annotated with logical axes (read by llm.parallel to place it on the mesh)."""
    if len(shape) != len(axes):
        raise ValueError(f"shape {tuple(shape)} and logical axes {tuple(axes)} differ in rank")
    return nnx.Param(init(rngs.params(), tuple(shape), dtype), logical_axes=tuple(axes))


def _flat_matmul(x: jax.Array, kernel: jax.Array, n_in: int) -> jax.Array:
    """x (..., *in) @ kernel (*in, *out) as one 2-D GEMM: (rows, in) @ (in, out).

    A plain 2-D dot is what CPU and accelerator GEMM kernels run fastest, forward and backward;
    multi-dimensional einsums make XLA insert transposes around the dots.
    """
    in_shape, out_shape = kernel.shape[:n_in], kernel.shape[n_in:]
    lead = x.shape[: x.ndim - n_in]
    rows = x.reshape(-1, math.prod(in_shape))
    y = rows @ kernel.reshape(math.prod(in_shape), math.prod(out_shape))
    return y.reshape(*lead, *out_shape)


class Dense(nnx.Module):
    """A linear map over named input dims to named output dims, computed with einsum.

    Kernels keep their natural head structure (e.g. (embed, heads, kv)) so tensor-parallel
    rules can split heads without reshapes.
    """

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
        stored = self.kernel.get_value()
        if hasattr(stored, "matmul"):  # a quantized (llm.peft.quant) or packed (llm.generate.layout) kernel multiplies itself
            y = stored.matmul(x, self.n_in, compute_dtype).astype(compute_dtype)
        else:
            y = _flat_matmul(x.astype(compute_dtype), self.kernel[...].astype(compute_dtype), self.n_in)
        if getattr(self, "lora_a", None) is not None:
            y = y + self._low_rank(x, compute_dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(compute_dtype)
        return y

    def _low_rank(self, x: jax.Array, compute_dtype) -> jax.Array:
        """(dropout(x) A) (scale B): a low-rank term beside the kernel, never folded into it, so a
        frozen kernel needs no weight-gradient matmul. Only present when a parameter-tree
        transform (llm.peft.lora) has set `lora_a`, `lora_b`, `lora_scale` (and, with dropout,
        `lora_dropout_key` / `lora_dropout_rate` variables fed per step) on this layer.

        Computed as 2-D matmuls on flattened dims with the scale folded into the small B: on
        CPU this halves the adapter's cost against einsums over the batch / head dims."""
        x = x.astype(compute_dtype)
        key = getattr(self, "lora_dropout_key", None)
        if key is not None:
            keep = 1.0 - self.lora_dropout_rate[...].astype(jnp.float32)
            mask = jax.random.bernoulli(jax.random.wrap_key_data(key[...]), keep, x.shape)
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
    def __init__(self, dim: int, eps: float, dtype, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = param(rngs, nnx.initializers.ones, (dim,), ("norm",), dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


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


def make_norm(family: str, dim: int, eps: float, dtype, rngs: nnx.Rngs) -> nnx.Module:
    return LayerNorm(dim, eps, dtype, rngs) if family == "gpt2" else RMSNorm(dim, eps, dtype, rngs)
