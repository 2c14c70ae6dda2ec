"""One decode step's attention over the blocked KV cache as a single CPU kernel call.

At decode each query is one position, so XLA's attention is many tiny batched dots (one
[1, hd] x [hd, slots] per batch row and kv head, per cache block, for scores and again for
values) plus the softmax, mask and concatenation around them, and with a bf16 cache XLA first
converts each block to f32 for its dots. The kernel (decode_attention.cc, an XLA FFI custom
call on the intra-op pool) reads each (batch row, kv head) slab of keys once for all its query
heads, then its values once, with f32 scores, softmax and sums, widening bf16 as it reads.
Measured on the 2-core dev VM (cores shared with other jobs, so +-20% or worse): one layer of
`small`'s attention at batch 16 over 192 bf16 slots took ~380 us on the kernel vs ~560 us
through XLA, and the whole bf16 batch-16 decode ran 1.3x-1.9x faster with it in interleaved
A/B runs; over an f32 cache the two were level (~500 us: both are bound by reading the
cache), so f32 models keep XLA's attention.

Used for one-token steps over a bf16 cache (precision.compute=bfloat16) on CPU when the kernel
builds (compiled on first use like the panel kernel) and the mesh is one device; prefill, f32
caches, other backends and sharded runs use the XLA path (llm.generate.kv_cache.
cache_attention), which is also the reference the tests compare with.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import platform
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from llm.cpu import build, features
from llm.generate.kv_cache import Blocks, cache_attention

log = logging.getLogger("llm")

TARGET = "llm_decode_attention"
MAX_BLOCKS = 32  # cache blocks per call (decode_attention.cc kMaxBlocks)
MAX_GROUP = 8  # query heads per kv head (kMaxGroup)
_SOURCE = Path(__file__).with_suffix(".cc")
_LIBRARIES: list = []


def compile_kernel(compiler: str | None = None, directory: Path | None = None) -> Path:
    """Build decode_attention.cc (llm.cpu.build.compile_kernel: cached, RuntimeError naming the
    compiler when it cannot be built)."""
    return build.compile_kernel(_SOURCE, compiler=compiler, directory=directory)


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether the kernel is built and registered with XLA (once per process): on an x86 CPU
    with AVX2 and FMA, or another CPU architecture; False off CPU."""
    if jax.default_backend() != "cpu":
        return False
    if platform.machine() in ("x86_64", "AMD64") and not {"avx2", "fma"} <= features.cpu_flags():
        return False
    try:
        library = ctypes.cdll.LoadLibrary(str(compile_kernel()))
    except (RuntimeError, OSError) as err:
        log.warning("CPU decode attention kernel unavailable (%s): decoding uses XLA's attention", err)
        return False
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.LlmDecodeAttention), platform="cpu")
    _LIBRARIES.append(library)  # the handler must outlive every compiled program that calls it
    return True


def applies(q: jax.Array, k_blocks: Blocks, single_device: bool) -> bool:
    """Whether this attention call runs on the kernel: a bf16 cache, one query position,
    head_dim a multiple of 8, at most MAX_GROUP query heads per kv head and MAX_BLOCKS blocks,
    one device. An f32 cache stays on XLA's dots: the kernel handles it too, but XLA's f32
    attention was as fast in our measurements (both are bound by reading the cache), while a
    bf16 cache costs XLA a conversion of every block to f32."""
    b, t, h, hd = q.shape
    kv = k_blocks[0].shape[1]
    return (
        single_device and t == 1 and hd % 8 == 0 and h // kv <= MAX_GROUP and len(k_blocks) <= MAX_BLOCKS
        and all(k.dtype == jnp.bfloat16 for k in k_blocks) and available()
    )


def kernel_attention(q: jax.Array, k_blocks: Blocks, v_blocks: Blocks, mask: jax.Array, scale: float | None = None,
                     softcap_at: float = 0.0) -> jax.Array:
    """The kernel call for one query position (T = 1): f32 or bf16 cache, cache_attention's
    shapes; the caller checks `applies` (tests call it directly for both cache dtypes)."""
    if not available():
        raise RuntimeError("the CPU decode attention kernel is not available here (see decode_attention.available)")
    b, _, h, hd = q.shape
    kv = k_blocks[0].shape[1]
    qg = q.reshape(b, kv, h // kv, hd).astype(jnp.float32)
    out = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(qg.shape, jnp.float32))(
        qg, mask.reshape(b, -1), *k_blocks, *v_blocks,
        scale=np.float32(hd**-0.5 if scale is None else scale), softcap=np.float32(softcap_at),
    )
    return out.reshape(b, 1, h, hd).astype(q.dtype)


def decode_attention(
    q: jax.Array, k_blocks: Blocks, v_blocks: Blocks, mask: jax.Array, scale: float | None = None,
    softcap_at: float = 0.0, single_device: bool = True,
) -> jax.Array:
    """cache_attention's contract (q (B, T, H, hd), blocks (B, KV, n_j, hd), mask (B, 1, T, S)
    -> (B, T, H, hd)), on the kernel where `applies`, else cache_attention itself."""
    if not applies(q, k_blocks, single_device):
        return cache_attention(q, k_blocks, v_blocks, mask, scale, softcap_at)
    return kernel_attention(q, k_blocks, v_blocks, mask, scale, softcap_at)
