"""The CPU's bf16 linear-layer matmul: bf16 operands, f32 accumulation, in the phrasings that
run on the matrix engine.

Why: XLA:CPU (jax 0.10, YNNPACK) runs a bf16 dot on AMX only when its result is f32 and it has
the x @ W form (contracting lhs columns with rhs rows, dy @ W^T included) on row-major operands;
a bf16-result dot is upcast to f32 and a weight gradient x^T @ dy (contracting the rows of both)
runs at f32 speed. XLA folds any transpose of its own into the dot's dimensions or layouts, so
x^T is written out by llm.cpu.gemm's FFI transpose, which XLA cannot see through, where the model
runs on one CPU device with AMX (`gemm_weight_grad`); dW is then x^T @ dy in the x @ W form.
Measured on a 2-core Sapphire Rapids for the weight-gradient shapes of `small`: 820-1,210
GFLOP/s with the transpose, against 690-1,040 for our own AMX GEMM (llm.cpu.gemm.gemm) and
~260 for XLA's dot; the `small` train step went 0.74 -> 0.69 s. dW comes back in f32, not
rounded to bf16 on its way to the f32 parameter.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from llm.cpu import features, gemm

_F32 = jnp.float32


def _dot(a: jax.Array, b: jax.Array, contract_a: int, contract_b: int) -> jax.Array:
    return jax.lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())), preferred_element_type=_F32)


def bf16_matmul(rows: jax.Array, w: jax.Array, gemm_weight_grad: bool = False) -> jax.Array:
    """rows (M, K) bf16 @ w (K, N) -> (M, N) bf16, with w rounded to bf16 and f32
    accumulation; w's gradient keeps w's dtype (see the module docstring)."""
    return _bf16_matmul(rows, w, gemm_weight_grad, jnp.dtype(w.dtype).name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _bf16_matmul(rows: jax.Array, w: jax.Array, gemm_weight_grad: bool, w_dtype: str) -> jax.Array:
    return _dot(rows, w.astype(jnp.bfloat16), 1, 0).astype(jnp.bfloat16)


def _forward(rows, w, gemm_weight_grad, w_dtype):
    w16 = w.astype(jnp.bfloat16)  # kept for the backward: the weight is cast once a step, not twice
    return _dot(rows, w16, 1, 0).astype(jnp.bfloat16), (rows, w16)


def _backward(gemm_weight_grad, w_dtype, residuals, dy):
    rows, w16 = residuals
    dy = dy.astype(jnp.bfloat16)
    dx = _dot(dy, w16, 1, 1).astype(rows.dtype)
    dw = _dot(gemm.transpose(rows), dy, 1, 0) if gemm_weight_grad else _dot(rows, dy, 0, 0)
    return dx, dw.astype(w_dtype)


_bf16_matmul.defvjp(_forward, _backward)


def cpu_matmul_route(platform: str | None, compute_dtype, devices: int, allow_kernel: bool) -> str:
    """ModelSpec.cpu_matmul: "" off CPU or in f32; "gemm" (the kernel library's transpose ahead
    of the weight-gradient dot) on one CPU device with AMX (unless `allow_kernel` is off: config
    model.cpu_gemm); else "xla". Multi-device CPU meshes keep XLA's dots: the custom call is not
    partitioned. CPUs with AVX-512 BF16 but no AMX keep them too: XLA's dots there are not on
    the matrix engine whatever their form, and the GEMM kernel's vdpbf16ps path ran the weight
    gradient at ~200 GFLOP/s against XLA's ~300 (f32 speed) on a 2-core Sapphire Rapids, whose
    vdpbf16ps does no more per cycle than its two f32 FMA ports."""
    if (platform or jax.default_backend()) != "cpu" or jnp.dtype(compute_dtype) != jnp.bfloat16:
        return ""
    if allow_kernel and devices == 1 and gemm.engine() == features.AMX:
        return "gemm"
    return "xla"
