"""The CPU decode matmul: a few rows times a weight matrix pre-packed into 16-column panels.

A decode step multiplies the batch's handful of rows by every weight matrix. XLA's CPU dots
(Eigen, or YNNPACK) pack the weights into their own panel layout on every call, so at these
shapes they run far below the machine's bandwidth: on the 2-core dev VM a 16-row x 512 x 1536
f32 dot takes ~250-280 us (~11 GB/s of weights). The generator therefore keeps its copy of the
weights already packed (`PanelKernel`, (panels, K, 16) contiguous) and multiplies with a small
C++ kernel (panel_matmul.cc, an XLA FFI custom call on both cores) that streams each panel once:
~165-190 us for the same dot, 1.2x-2x faster than XLA's dot from 1 to 64 rows and level with
its GEMM at prefill sizes.

Models that compute in bf16 use the bf16 variant on CPUs with AMX or AVX-512 BF16
(llm.generate.panel_bf16, same library). The kernel is compiled on first use with the machine's C++ compiler against the installed
jaxlib's FFI headers and cached on disk (like PyTorch's CPU inductor). Off CPU nothing is
packed; without a working compiler nothing is either, a warning says so, and decoding uses XLA's
dots (same results, slower).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import logging
import math
from pathlib import Path

import jax
import jax.numpy as jnp

from llm.cpu import build
from llm.model.kernel import Kernel

log = logging.getLogger("llm")

WIDTH = 16
# The kernel reads all of x once per panel, so x must stay in cache: measured on the dev VM
# (512 x 1536 and 1536 x 512 f32) it is 1.2-2x faster than XLA's dot from 1 to 64 rows, and even
# or ahead up to 8 MiB of x (4096 x 512: 170 vs 162-176 GFLOP/s); at 16 MiB (8192 x 512) XLA's
# GEMM leads (175 vs 165), so larger inputs (long prefills) multiply the unpacked kernel.
MAX_INPUT_BYTES = 8 * 2**20
TARGET = "llm_panel_matmul"
_SOURCE = Path(__file__).with_suffix(".cc")


def compile_kernel(compiler: str | None = None, directory: Path | None = None) -> Path:
    """Build panel_matmul.cc (llm.cpu.build.compile_kernel: cached, RuntimeError naming the
    compiler when it cannot be built)."""
    return build.compile_kernel(_SOURCE, compiler=compiler, directory=directory)


_LIBRARIES: list = []  # loaded kernel libraries, kept for the life of the process


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether the kernel is built and registered with XLA (once per process); False off CPU."""
    if jax.default_backend() != "cpu":
        return False
    try:
        library = ctypes.cdll.LoadLibrary(str(compile_kernel()))
    except (RuntimeError, OSError) as err:
        log.warning("CPU decode kernel unavailable (%s): decoding uses XLA's dots, slower at small batch", err)
        return False
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.LlmPanelMatmul), platform="cpu")
    _LIBRARIES.append(library)  # the handler must outlive every compiled program that calls it
    return True


def library() -> ctypes.CDLL:
    """The loaded kernel library (after `available()` returned True): the bf16 handler
    (llm.generate.panel_bf16) lives in it too."""
    return _LIBRARIES[0]


def panel_matmul(rows: jax.Array, panels: jax.Array) -> jax.Array:
    """rows (M, K) f32 @ the matrix packed as panels (P, K, 16) f32 -> (M, P * 16) f32."""
    out = jax.ShapeDtypeStruct((rows.shape[0], panels.shape[0] * WIDTH), jnp.float32)
    return jax.ffi.ffi_call(TARGET, out)(rows, panels)


class PanelShape:
    """The array-like shape of a kernel packed into panels (PanelKernel, and the bf16 one in
    llm.generate.panel_bf16): `full_shape` (*in, *out) viewed as a (k, columns) matrix."""

    panels: jax.Array
    full_shape: tuple[int, ...]
    n_in: int

    @property
    def shape(self) -> tuple[int, ...]:
        return self.full_shape

    @property
    def ndim(self) -> int:
        return len(self.full_shape)

    @property
    def size(self) -> int:
        return math.prod(self.full_shape)

    @property
    def dtype(self):
        return self.panels.dtype

    @property
    def columns(self) -> int:
        return math.prod(self.full_shape[self.n_in :])

    @property
    def k(self) -> int:
        return math.prod(self.full_shape[: self.n_in])


@functools.partial(jax.tree_util.register_dataclass, data_fields=["panels"], meta_fields=["full_shape", "n_in"])
@dataclasses.dataclass(frozen=True)
class PanelKernel(PanelShape, Kernel):
    """A Dense kernel of shape `full_shape` viewed as a matrix (prod(in dims), prod(out dims)),
    stored as 16-column panels (zero-padded on the right). A Kernel (llm.model.kernel): Dense
    and the LM head call its `matmul`; `[...]` gives the kernel back. Only generation on CPU
    holds one."""

    panels: jax.Array  # (P, K, WIDTH)
    full_shape: tuple[int, ...]
    n_in: int

    def __getitem__(self, index) -> jax.Array:
        if index is not Ellipsis:
            raise TypeError("PanelKernel only supports [...] (the whole kernel)")
        p, k, w = self.panels.shape
        matrix = self.panels.transpose(1, 0, 2).reshape(k, p * w)[:, : self.columns]
        return matrix.reshape(self.full_shape)

    def matmul(self, x: jax.Array, n_in: int, compute_dtype) -> jax.Array:
        """x (..., *in) @ the kernel in f32 -> (..., *out): the panel kernel for inputs of up to
        MAX_INPUT_BYTES, XLA's dot on the unpacked kernel beyond (or in another compute dtype)."""
        if n_in != self.n_in:
            raise ValueError(f"PanelKernel packed with {self.n_in} input dims, called with {n_in}")
        lead = x.shape[: x.ndim - n_in]
        k = self.panels.shape[1]
        rows = x.reshape(-1, k)
        if rows.shape[0] * k * 4 > MAX_INPUT_BYTES or jnp.dtype(compute_dtype) != jnp.float32:
            y = jnp.dot(rows.astype(compute_dtype), self[...].reshape(k, -1).astype(compute_dtype),
                        preferred_element_type=jnp.float32)
        else:
            y = panel_matmul(rows.astype(jnp.float32), self.panels)[:, : self.columns]
        return y.reshape(*lead, *self.full_shape[n_in:])


@functools.partial(jax.jit, static_argnums=1)
def pack(kernel: jax.Array, n_in: int) -> PanelKernel:
    """kernel (*in, *out) as a PanelKernel: columns padded with zeros to a multiple of WIDTH."""
    k = math.prod(kernel.shape[:n_in])
    matrix = kernel.reshape(k, -1)
    n = matrix.shape[1]
    matrix = jnp.pad(matrix, ((0, 0), (0, -n % WIDTH)))
    panels = matrix.reshape(k, -1, WIDTH).transpose(1, 0, 2)
    return PanelKernel(panels, tuple(kernel.shape), n_in)
