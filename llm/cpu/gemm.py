"""bf16 GEMM with f32 accumulation on the CPU's matrix engine (AMX tiles, else AVX-512 BF16).

Why: XLA:CPU (jax 0.10) hands bf16 dots with an f32 result to YNNPACK, which uses AMX for
x @ W and dy @ W^T (1.5-2 TFLOP/s on a 2-core Sapphire Rapids VM) but not for the weight
gradient x^T @ dy, whose contraction runs over the rows of both operands (~300 GFLOP/s, the f32
speed). gemm.cc packs its operands itself, so every transpose case runs on the engine. The
same library holds a bf16 transpose: training writes x^T out with it and hands x^T @ dy to
XLA's dot in the form YNNPACK runs on AMX, which measured faster than this GEMM
(llm.cpu.matmul). It is compiled on first use (llm.cpu.build) and registered as XLA FFI custom
calls; machines without AMX or AVX-512 BF16, other backends, and a missing or failing compiler
keep XLA's dots.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from llm.cpu import build, features

log = logging.getLogger("llm")

TARGET = "llm_bf16_gemm"
TRANSPOSE_TARGET = "llm_bf16_transpose"
_SOURCE = Path(__file__).with_name("gemm.cc")
_ENGINES = {features.AVX512_BF16: 0, features.AMX: 1}
_LIBRARIES: list = []  # loaded kernel libraries, kept for the life of the process


def compile_kernel(compiler: str | None = None, directory: Path | None = None) -> Path:
    """Build gemm.cc (cached; RuntimeError naming the compiler when it cannot be built)."""
    return build.compile_kernel(_SOURCE, compiler=compiler, directory=directory)


@functools.lru_cache(maxsize=None)
def engine() -> str | None:
    """The engine the kernel runs on in this process ("amx", "avx512_bf16"), or None when it is
    not used: not a CPU backend, no bf16 engine, or the kernel could not be built (logged once)."""
    if jax.default_backend() != "cpu":
        return None
    return load_engine()


def load_engine(compiler: str | None = None, directory: Path | None = None) -> str | None:
    """Build, load and register the kernel for this CPU's bf16 engine; None (and the reason
    logged) where there is no engine or the kernel cannot be built."""
    found = features.host_bf16_engine()
    if found is None:
        log.info("bf16 GEMM kernel: this CPU has neither AMX nor AVX-512 BF16; training matmuls use XLA's dots")
        return None
    try:
        library = ctypes.cdll.LoadLibrary(str(compile_kernel(compiler, directory)))
    except (RuntimeError, OSError) as err:
        log.warning("bf16 GEMM kernel unavailable (%s): training matmuls use XLA's dots", err)
        return None
    if found == features.AMX and not library.LlmRequestAmx():
        log.warning("Linux refused this process the AMX tile state: the bf16 GEMM kernel uses AVX-512 BF16")
        found = features.AVX512_BF16 if features.AVX512_BF16 in features.cpu_flags() else None
        if found is None:
            return None
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.LlmBf16Gemm), platform="cpu")
    jax.ffi.register_ffi_target(TRANSPOSE_TARGET, jax.ffi.pycapsule(library.LlmBf16Transpose), platform="cpu")
    _LIBRARIES.append(library)  # the handler must outlive every compiled program that calls it
    log.info("bf16 GEMM kernel: %s (weight gradients of CPU bf16 training)", found)
    return found


def gemm(a: jax.Array, b: jax.Array, trans_a: bool = False, trans_b: bool = False, on: str | None = None) -> jax.Array:
    """op(a) @ op(b) -> f32 (M, N) for bf16 a, b, op = transpose where asked: a is (M, K) or,
    transposed, (K, M); b is (K, N) or (N, K). `on` forces an engine (tests); default: engine()."""
    on = on or engine()
    if on is None:
        raise RuntimeError("the bf16 GEMM kernel is not available on this machine (see llm.cpu.gemm.engine)")
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    out = jax.ShapeDtypeStruct((m, n), jnp.float32)
    return jax.ffi.ffi_call(TARGET, out)(
        a.astype(jnp.bfloat16), b.astype(jnp.bfloat16),
        trans_a=np.int32(trans_a), trans_b=np.int32(trans_b), engine=np.int32(_ENGINES[on]),
    )


def transpose(a: jax.Array) -> jax.Array:
    """a (M, K) bf16 -> a^T (K, M), materialised row-major by the kernel library, where XLA
    would fold a transpose of its own into the consuming dot (llm.cpu.matmul)."""
    if engine() is None:
        raise RuntimeError("the bf16 GEMM kernel is not available on this machine (see llm.cpu.gemm.engine)")
    out = jax.ShapeDtypeStruct((a.shape[1], a.shape[0]), jnp.bfloat16)
    return jax.ffi.ffi_call(TRANSPOSE_TARGET, out)(a.astype(jnp.bfloat16))
