"""What a linear layer multiplies by: a plain array, or a `Kernel` that multiplies itself.

Transforms over the parameter tree may store a weight in another form than a plain array:
block-quantized for QLoRA (llm.peft.quant.QTensor), packed into panels for the CPU decode
kernel (llm.generate.panel_matmul.PanelKernel). Such a form subclasses `Kernel`, so the model
multiplies by it without knowing which forms exist, and a plain array takes the one default
path (`matmul`).
"""

from __future__ import annotations

import abc
import math

import jax
import jax.numpy as jnp

from llm.cpu.matmul import bf16_matmul


class Kernel(abc.ABC):
    """A weight of logical shape `shape` (*in, *out) stored in another form than a plain array."""

    shape: tuple[int, ...]  # the logical shape, as the plain array would have it

    @abc.abstractmethod
    def matmul(self, x: jax.Array, n_in: int, compute_dtype) -> jax.Array:
        """x (..., *in) @ this weight -> (..., *out), in `compute_dtype` or f32 (the caller casts)."""

    @abc.abstractmethod
    def __getitem__(self, index) -> jax.Array:
        """`[...]`: the whole weight as a plain array (embedding lookups, merges, export)."""


def flat_matmul(x: jax.Array, kernel: jax.Array, n_in: int, route: str = "") -> jax.Array:
    """x (..., *in) @ kernel (*in, *out) as one 2-D GEMM: (rows, in) @ (in, out).

    A plain 2-D dot is what CPU and accelerator GEMM kernels run fastest, forward and backward;
    multi-dimensional einsums make XLA insert transposes around the dots. `route` (a CPU bf16
    model's ModelSpec.cpu_matmul) sends the GEMM to llm.cpu.matmul.bf16_matmul: "xla" or "gemm".
    """
    in_shape, out_shape = kernel.shape[:n_in], kernel.shape[n_in:]
    lead = x.shape[: x.ndim - n_in]
    rows = x.reshape(-1, math.prod(in_shape))
    matrix = kernel.reshape(math.prod(in_shape), math.prod(out_shape))
    y = bf16_matmul(rows.astype(jnp.bfloat16), matrix, route == "gemm") if route else rows @ matrix
    return y.reshape(*lead, *out_shape)


def matmul(kernel: jax.Array | Kernel, x: jax.Array, n_in: int, compute_dtype, route: str = "") -> jax.Array:
    """x (..., *in) @ kernel (*in, *out) in `compute_dtype`: a Kernel multiplies itself, a plain
    array is cast to the compute dtype and multiplied as one 2-D GEMM (on `route`, see
    flat_matmul; the cast to bf16 then happens inside, so the weight gradient stays f32)."""
    if isinstance(kernel, Kernel):
        return kernel.matmul(x, n_in, compute_dtype).astype(compute_dtype)
    if route:
        return flat_matmul(x, kernel, n_in, route)
    return flat_matmul(x.astype(compute_dtype), kernel.astype(compute_dtype), n_in)
