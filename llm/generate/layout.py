"""The generator's own copy of the weights, laid out for decoding on CPU.

A decode step multiplies a few rows (the batch) by every weight matrix. With XLA's own (Eigen)
dots, which the CPU decode loop uses (llm.generate.engine), the untied LM head (d_model x
vocab) runs at half the rate of the layers' matrices: measured on the `small` config (512 x
8192) at batch 16, one core, ~5.2 ms per step as one matrix and ~2.7 ms as sixteen 512-column
blocks (~2.8 vs ~1.6 ms on two cores); the whole decode step went from ~29.4 to ~26.5 ms. At
batch 1 the blocks cost ~0.25 ms more (~2%). The values are the same; only the head's storage
changes (llm.model.layers.ColumnBlocks), so the logits are the same dots column by column.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from llm.model.layers import ColumnBlocks

HEAD_BLOCK = 512


def block_head(params: Any, width: int = HEAD_BLOCK) -> Any:
    """params with an untied LM head (a plain 2-D array under "head") split into ColumnBlocks of
    `width` columns (the last may be narrower). Other trees are returned as they are."""
    head = params.get("head") if isinstance(params, dict) else None
    if not isinstance(head, jax.Array) or head.ndim != 2 or head.shape[1] <= width:
        return params
    cols = head.shape[1]
    split = jax.jit(lambda h: ColumnBlocks(tuple(h[:, i : min(i + width, cols)] for i in range(0, cols, width))))
    return {**params, "head": split(head)}
