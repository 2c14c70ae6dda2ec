"""Can this GPU's cuDNN run our attention? Asked of cuDNN itself, once per shape.

jax.nn.dot_product_attention(implementation="cudnn") refuses what cuDNN cannot take (no cuDNN, a
cuDNN too old for the GPU, a head dim over 128 before Hopper or 256 on it, float32 inputs) only
when the step compiles, deep in a trace. Compiling one tiny call of the exact form `attend` uses
(packing bias, causal, GQA, the model's head dim and dtype) turns that into a sentence before
anything is built.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.lru_cache(maxsize=None)
def cudnn_attention_problem(head_dim: int, n_heads: int, n_kv_heads: int, dtype_name: str) -> str | None:
    """None when cuDNN compiles a forward and backward of this attention, else its reason in one line."""
    dtype = jnp.dtype(dtype_name)
    q = jax.ShapeDtypeStruct((1, 128, n_heads, head_dim), dtype)
    kv = jax.ShapeDtypeStruct((1, 128, n_kv_heads, head_dim), dtype)
    bias = jax.ShapeDtypeStruct((1, 1, 128, 128), dtype)

    def loss(q, k, v, bias):
        out = jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=True, implementation="cudnn")
        return jnp.sum(out.astype(jnp.float32))

    try:
        jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv, bias).compile()
    except Exception as err:  # noqa: BLE001 - any refusal (RuntimeError, ValueError, NotImplementedError, XLA's) is the answer
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        return (lines[0] if lines else type(err).__name__)[:200]
    return None
