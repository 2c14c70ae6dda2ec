"""The bf16 CPU decode matmul: a few bf16 rows times a weight matrix pre-packed in bf16 panels,
f32 accumulation, on the CPU's bf16 matrix engine (AMX tiles, else AVX-512 BF16 `vdpbf16ps`).

For models that compute in bf16 (precision.compute=bfloat16) this replaces the f32 panel kernel
(llm.generate.panel_matmul): each decode step streams half the weight bytes, and the engines
multiply 16 rows at a small fraction of the cost of the f32 FMAs. The weights are held as
16-column panels (P, K/2, 32) whose rows are VNNI pairs, [w[2p][c], w[2p+1][c]] for c = 0..15,
with K zero-padded to a multiple of 32: 16 such rows are one AMX B tile, and one row is the
second operand of a `vdpbf16ps`. The kernel lives in panel_matmul.cc (one library, each engine
compiled with its own target attributes and chosen at run time); CPUs with neither engine keep
the f32 kernel or XLA's dots.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np

from llm.cpu import features
from llm.generate import panel_matmul
from llm.model.kernel import Kernel

log = logging.getLogger("llm")

WIDTH = panel_matmul.WIDTH
K_STEP = 32  # k per AMX tile: the packed K is padded to a multiple of it
TARGET = "llm_panel_matmul_bf16"
ENGINES = {features.AVX512_BF16: 0, features.AMX: 1}  # the kernel's `engine` attribute


@functools.lru_cache(maxsize=None)
def _registered() -> bool:
    """Whether the kernel library is built and its bf16 handler registered with XLA (once)."""
    if not panel_matmul.available():
        return False
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(panel_matmul.library().LlmPanelMatmulBf16), platform="cpu")
    return True


@functools.lru_cache(maxsize=None)
def engine() -> str | None:
    """The bf16 engine the decode kernel runs on in this process ("amx", "avx512_bf16"), or None
    (off CPU, a CPU with neither engine, or no kernel library). The CPU flags
    (llm.cpu.features) name the engine; the library confirms the instructions and OS state and,
    for AMX, asks Linux for the tile state, falling back to AVX-512 BF16 if refused."""
    found = features.host_bf16_engine() if jax.default_backend() == "cpu" else None
    if found is None or not _registered():
        return None
    usable = panel_matmul.library().LlmPanelBf16Engines()
    if found == features.AMX and not usable & (1 << ENGINES[features.AMX]):
        log.warning("AMX tiles unusable in this process (Linux refused the tile state?): bf16 decode uses AVX-512 BF16")
        found = features.AVX512_BF16
    return found if usable & (1 << ENGINES[found]) else None


def panel_matmul_bf16(rows: jax.Array, panels: jax.Array, on: str | None = None) -> jax.Array:
    """rows (M, K) @ the matrix packed as bf16 panels (P, Kp/2, 32) -> f32 (M, P * 16). Rows are
    rounded to bf16 and zero-padded to Kp. `on` forces an engine (tests); default: engine()."""
    on = on or engine()
    if on is None or not _registered():
        raise RuntimeError("no bf16 engine for the decode kernel on this machine (see llm.generate.panel_bf16.engine)")
    kp = 2 * panels.shape[1]
    rows = rows.astype(jnp.bfloat16)
    if rows.shape[1] != kp:
        rows = jnp.pad(rows, ((0, 0), (0, kp - rows.shape[1])))
    out = jax.ShapeDtypeStruct((rows.shape[0], panels.shape[0] * WIDTH), jnp.float32)
    return jax.ffi.ffi_call(TARGET, out)(rows, panels, engine=np.int32(ENGINES[on]))


@functools.partial(jax.tree_util.register_dataclass, data_fields=["panels"], meta_fields=["full_shape", "n_in"])
@dataclasses.dataclass(frozen=True)
class Bf16PanelKernel(panel_matmul.PanelShape, Kernel):
    """A Dense kernel of shape `full_shape` viewed as a matrix (prod(in dims) = K, prod(out
    dims)), stored in bf16 as 16-column panels of k pairs, zero-padded to whole panels and to a
    multiple of 32 rows. A Kernel (llm.model.kernel): Dense and the LM head call its `matmul`;
    `[...]` gives the (bf16) kernel back. Only bf16 generation on a CPU with a bf16 engine
    holds one."""

    panels: jax.Array  # (P, Kp / 2, 2 * WIDTH) bf16
    full_shape: tuple[int, ...]
    n_in: int

    def __getitem__(self, index) -> jax.Array:
        if index is not Ellipsis:
            raise TypeError("Bf16PanelKernel only supports [...] (the whole kernel)")
        p, pairs, _ = self.panels.shape
        matrix = self.panels.reshape(p, pairs, WIDTH, 2).transpose(1, 3, 0, 2).reshape(2 * pairs, p * WIDTH)
        return matrix[: self.k, : self.columns].reshape(self.full_shape)

    def matmul(self, x: jax.Array, n_in: int, compute_dtype) -> jax.Array:
        """x (..., *in) @ the kernel -> f32 (..., *out), x rounded to bf16: the bf16 panel kernel
        for inputs of up to panel_matmul.MAX_INPUT_BYTES, XLA's f32-accumulating bf16 dot on the
        unpacked kernel beyond (or in another compute dtype)."""
        if n_in != self.n_in:
            raise ValueError(f"Bf16PanelKernel packed with {self.n_in} input dims, called with {n_in}")
        lead = x.shape[: x.ndim - n_in]
        rows = x.reshape(-1, self.k)
        on = engine()
        if on is None or rows.shape[0] * self.k * 2 > panel_matmul.MAX_INPUT_BYTES or jnp.dtype(compute_dtype) != jnp.bfloat16:
            y = jnp.dot(rows.astype(compute_dtype), self[...].reshape(self.k, -1).astype(compute_dtype),
                        preferred_element_type=jnp.float32)
        else:
            y = panel_matmul_bf16(rows, self.panels, on)[:, : self.columns]
        return y.reshape(*lead, *self.full_shape[n_in:])


@functools.partial(jax.jit, static_argnums=1)
def pack_bf16(kernel: jax.Array, n_in: int) -> Bf16PanelKernel:
    """kernel (*in, *out) rounded to bf16 as a Bf16PanelKernel: rows padded with zeros to a
    multiple of 32, columns to a multiple of 16, then k pairs interleaved per column."""
    k = math.prod(kernel.shape[:n_in])
    matrix = kernel.reshape(k, -1).astype(jnp.bfloat16)
    n = matrix.shape[1]
    matrix = jnp.pad(matrix, ((0, -k % K_STEP), (0, -n % WIDTH)))
    kp, np_ = matrix.shape
    panels = matrix.reshape(kp // 2, 2, np_ // WIDTH, WIDTH).transpose(2, 0, 3, 1).reshape(np_ // WIDTH, kp // 2, 2 * WIDTH)
    return Bf16PanelKernel(panels, tuple(kernel.shape), n_in)
