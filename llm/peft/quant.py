"""Block-wise int8 / NF4 storage for frozen weights (QLoRA), dequantized where they are read.

A QTensor replaces an array leaf of the frozen tree. Its layout views the weight as a matrix
(rows = the input side, flattened; columns = the output side) with any leading layer axis kept,
and stores one f32 scale (the block's absolute maximum) per `block` consecutive rows of a
column. NF4 packs two 4-bit codes per byte: 0.5 + 4 / block bytes per value (0.5625 at 64).

A QTensor is a Kernel (llm.model.kernel): Dense layers and an untied LM head call its
`matmul`, and `qtensor[...]` returns the dequantized array for model code that reads
`variable[...]` (the embedding). The dequantize is elementwise work feeding the matmul, which
XLA fuses into the dot's operand on GPU and TPU.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llm.errors import UserError
from llm.model.kernel import Kernel

# The 16 NF4 levels (QLoRA, Dettmers et al. 2023): quantiles of N(0, 1) scaled to [-1, 1], with an exact 0.
NF4_LEVELS = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], np.float32)
_NF4_MIDPOINTS = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QTensor(Kernel):
    codes: jax.Array  # int8 (*lead, rows, cols) or uint8 (*lead, rows / 2, cols) for nf4
    scales: jax.Array  # f32 (*lead, rows / block, cols)
    shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))  # the logical shape
    lead: int = dataclasses.field(metadata=dict(static=True))  # leading (layer) axes kept
    rows: int = dataclasses.field(metadata=dict(static=True))
    fmt: str = dataclasses.field(metadata=dict(static=True))
    block: int = dataclasses.field(metadata=dict(static=True))
    dtype: Any = dataclasses.field(metadata=dict(static=True))  # of the dequantized array

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.codes.size * self.codes.dtype.itemsize + self.scales.size * self.scales.dtype.itemsize

    def _meta(self) -> tuple:
        return (self.shape, self.lead, self.rows, self.fmt, self.block, self.dtype)

    def dequantize(self) -> jax.Array:
        return _dequantize(self.codes, self.scales, self._meta())

    def __getitem__(self, index):
        if index is not Ellipsis:
            raise TypeError("a QTensor only supports [...] (the whole dequantized array)")
        return self.dequantize()

    def matmul(self, x: jax.Array, n_in: int, compute_dtype) -> jax.Array:
        """x (..., *in) @ the dequantized matrix, as one 2-D GEMM (what llm.model.layers.Dense
        runs for a quantized kernel). The backward pass dequantizes again instead of keeping
        the full-precision matrix from the forward pass alive: QLoRA's memory saving would
        otherwise end at the first layer."""
        if self.codes.ndim != 2:
            raise ValueError("QTensor.matmul needs one layer's matrix (scanned stacks are sliced by the scan)")
        body = self.shape[self.lead:]
        in_shape, out_shape = body[:n_in], body[n_in:]
        lead = x.shape[: x.ndim - n_in]
        rows = x.reshape(-1, math.prod(in_shape)).astype(compute_dtype)
        y = _qmatmul(rows, self.codes, self.scales, (*self._meta(), jnp.dtype(compute_dtype).name))
        return y.reshape(*lead, *out_shape)


def _dequantize(codes: jax.Array, scales: jax.Array, meta: tuple) -> jax.Array:
    full_shape, full_lead, rows, fmt, block, dtype = meta
    # Inside a scan over layers the leaves arrive without their layer axis; the static shape
    # still has it, so drop as many leading dims as the codes lost.
    shape = full_shape[full_lead - (codes.ndim - 2):]
    lead = shape[: codes.ndim - 2]
    cols = codes.shape[-1]
    if fmt == "nf4":
        packed = codes.astype(jnp.int32)
        idx = jnp.stack([packed >> 4, packed & 15], axis=-2).reshape(*lead, rows, cols)
        values = jnp.asarray(NF4_LEVELS)[idx]
    else:
        values = codes.astype(jnp.float32) / 127.0
    blocks = values.reshape(*lead, rows // block, block, cols) * scales[..., :, None, :]
    return blocks.reshape(shape).astype(dtype)


def _matrix(codes: jax.Array, scales: jax.Array, meta: tuple) -> jax.Array:
    *dequant_meta, compute = meta
    w = _dequantize(codes, scales, tuple(dequant_meta))
    return w.reshape(dequant_meta[2], -1).astype(compute)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _qmatmul(rows: jax.Array, codes: jax.Array, scales: jax.Array, meta: tuple) -> jax.Array:
    return rows @ _matrix(codes, scales, meta)


def _qmatmul_fwd(rows, codes, scales, meta):
    return rows @ _matrix(codes, scales, meta), (codes, scales)


def _qmatmul_bwd(meta, residuals, g):
    codes, scales = residuals
    return g @ _matrix(codes, scales, meta).T, None, None


_qmatmul.defvjp(_qmatmul_fwd, _qmatmul_bwd)


def matrix_rows(shape: tuple[int, ...], lead: int, n_in: int) -> int:
    """Rows of the matrix view: the product of the input dims after the leading axes."""
    return math.prod(shape[lead : lead + n_in])


def can_quantize(shape: tuple[int, ...], lead: int, n_in: int, block: int) -> bool:
    body = shape[lead:]
    return len(body) >= 2 and 0 < n_in < len(body) and matrix_rows(shape, lead, n_in) % block == 0


def quantize(x: jax.Array, fmt: str, block: int, lead: int = 0, n_in: int = 1) -> QTensor:
    """Block-wise absmax quantization of `x` viewed as (*lead, rows, cols)."""
    shape = tuple(x.shape)
    if not can_quantize(shape, lead, n_in, block):
        raise UserError(f"cannot quantize an array of shape {shape} in blocks of {block} rows; set peft.quant_block to a divisor of its input size")
    rows = matrix_rows(shape, lead, n_in)
    lead_shape = shape[:lead]
    m = x.astype(jnp.float32).reshape(*lead_shape, rows // block, block, -1)
    scales = jnp.max(jnp.abs(m), axis=-2)
    safe = jnp.where(scales > 0, scales, 1.0)
    normed = m / safe[..., :, None, :]
    cols = m.shape[-1]
    if fmt == "int8":
        codes = jnp.clip(jnp.round(normed * 127.0), -127, 127).astype(jnp.int8).reshape(*lead_shape, rows, cols)
    elif fmt == "nf4":
        idx = jnp.searchsorted(jnp.asarray(_NF4_MIDPOINTS), normed.reshape(*lead_shape, rows, cols)).astype(jnp.uint8)
        pairs = idx.reshape(*lead_shape, rows // 2, 2, cols)
        codes = (pairs[..., 0, :] << 4) | pairs[..., 1, :]
    else:
        raise UserError(f"quantization format {fmt!r} is not int8 or nf4")
    return QTensor(codes, scales, shape, lead, rows, fmt, block, x.dtype)


def quantized_bytes(tree: Any) -> tuple[int, int]:
    """(bytes, logical values) of a tree that may hold QTensors."""
    nbytes = values = 0
    for leaf in jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, QTensor)):
        if isinstance(leaf, QTensor):
            nbytes += leaf.nbytes
            values += leaf.size
        else:
            nbytes += leaf.size * leaf.dtype.itemsize
            values += leaf.size
    return nbytes, values
