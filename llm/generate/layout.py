"""The generator's own copy of the weights, laid out for decoding on CPU.

A decode step multiplies a few rows (the batch) by every weight matrix, and XLA's own (Eigen)
dots, which the CPU decode loop uses (llm.generate.engine), run those shapes far below the
machine's bandwidth. Two layouts help, both storing a kernel as column blocks
(llm.model.layers.ColumnBlocks), so every output column is the same dot as before:

- The untied LM head (d_model x vocab) in 512-column blocks: measured on the `small` config
  (512 x 8192) at batch 16, one core, ~5.2 ms per step as one matrix and ~2.7 ms as sixteen
  blocks (~2.8 vs ~1.6 ms on two cores). At batch 1 the blocks cost ~0.25 ms more (~2%).
- Each layer's matrices in two column halves, which XLA runs as independent dots on the two
  cores at once: at 16 rows, 512 x 512 went from ~160 to ~108 us and 1536 x 512 from ~480 to
  ~334 us (a chain of such dots in one compiled loop, 2-core dev VM), and the `small` decode
  step at batch 16 from ~17.8-18.9 to ~16.1-16.8 ms. With fewer rows the extra dots cost more
  than they gain (batch 4: 11.6 -> 14.5 ms, batch 8: 12.8 -> 15.4 ms) and at 32 rows it is
  even (37.3 ms), so the generator uses halves from HALVES_MIN_ROWS rows up.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax

from llm.model.layers import ColumnBlocks

HEAD_BLOCK = 512
HALVES_MIN_ROWS = 16
# The layer kernels halve_layer_kernels splits, with how many of their leading dims are inputs.
LAYER_KERNELS = {
    ("attn", "q"): 1, ("attn", "k"): 1, ("attn", "v"): 1, ("attn", "o"): 2,
    ("mlp", "gate"): 1, ("mlp", "up"): 1, ("mlp", "down"): 1,
}


def _split_columns(matrix: jax.Array, width: int, full_shape: tuple[int, ...] = ()) -> ColumnBlocks:
    cols = matrix.shape[1]
    return ColumnBlocks(tuple(matrix[:, i : min(i + width, cols)] for i in range(0, cols, width)), full_shape)


@functools.partial(jax.jit, static_argnums=1)
def _halve(kernel: jax.Array, n_in: int) -> ColumnBlocks:
    matrix = kernel.reshape(math.prod(kernel.shape[:n_in]), -1)
    return _split_columns(matrix, matrix.shape[1] // 2, tuple(kernel.shape))


_join = jax.jit(lambda kernel: kernel[...])


def block_head(params: Any, width: int = HEAD_BLOCK) -> Any:
    """params with an untied LM head (a plain 2-D array under "head") split into ColumnBlocks of
    `width` columns (the last may be narrower). Other trees are returned as they are."""
    head = params.get("head") if isinstance(params, dict) else None
    if not isinstance(head, jax.Array) or head.ndim != 2 or head.shape[1] <= width:
        return params
    return {**params, "head": jax.jit(_split_columns, static_argnums=1)(head, width)}


def halve_layer_kernels(params: Any) -> Any:
    """params with every layer's attention and MLP kernels split into two column halves, for a
    model whose layers are a list (a scanned stack is returned as it is, as are kernels that
    are not plain arrays, e.g. quantized ones, or have an odd number of output columns)."""
    blocks = params.get("blocks") if isinstance(params, dict) else None
    if not isinstance(blocks, dict) or not all(isinstance(k, int) for k in blocks):
        return params

    def halve(path, leaf):
        keys = tuple(getattr(p, "key", None) for p in path)  # (layer, group, name, "kernel")
        n_in = LAYER_KERNELS.get(keys[1:3]) if len(keys) == 4 and keys[3] == "kernel" else None
        if n_in is None or not isinstance(leaf, jax.Array) or (leaf.size // math.prod(leaf.shape[:n_in])) % 2:
            return leaf
        return _halve(leaf, n_in)

    return {**params, "blocks": jax.tree_util.tree_map_with_path(halve, blocks)}


def join_layer_kernels(params: Any) -> Any:
    """The inverse of halve_layer_kernels: layer kernels held as ColumnBlocks become whole
    arrays again (the LM head's blocks are kept)."""
    blocks = params.get("blocks") if isinstance(params, dict) else None
    if not isinstance(blocks, dict):
        return params
    is_blocks = lambda x: isinstance(x, ColumnBlocks)
    joined = jax.tree_util.tree_map(lambda x: _join(x) if is_blocks(x) else x, blocks, is_leaf=is_blocks)
    return {**params, "blocks": joined}
