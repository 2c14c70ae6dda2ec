"""The batch contract: the arrays every input pipeline yields and every train step takes.

One definition of the keys and dtypes, so the data pipeline, the fine-tuning batches, the cost
report and `llm compile` (which lower the step on abstract batches) cannot drift apart. Each
array is (rows, data.seq_len); the step sees data.batch_size rows, a process yields its share.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

BATCH_DTYPES: dict[str, np.dtype] = {
    "inputs": np.dtype(np.int32),  # token ids
    "targets": np.dtype(np.int32),  # the next token at each position
    "segment_ids": np.dtype(np.int32),  # which packed document a position belongs to; 0 is padding
    "positions": np.dtype(np.int32),  # position inside its document (RoPE / learned positions)
    "loss_mask": np.dtype(np.float32),  # weight of each target in the loss
}
BATCH_KEYS = tuple(BATCH_DTYPES)


def as_batch(fields: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The contract's arrays from `fields` (one per key), each cast to its dtype (a copy)."""
    return {key: np.asarray(fields[key]).astype(dtype) for key, dtype in BATCH_DTYPES.items()}


def empty_batch(shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Zero-filled arrays of `shape` (all padding: segment 0, no loss), to be filled in place."""
    return {key: np.zeros(shape, dtype) for key, dtype in BATCH_DTYPES.items()}


def abstract_batch(batch_size: int, seq_len: int, sharding: Any = None, extra_keys: tuple[str, ...] = ()) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch as ShapeDtypeStructs placed by `sharding`: what a step is lowered on.
    `extra_keys` are a task's own float32 (rows, seq_len) arrays (e.g. DPO's reference log-probs)."""
    dtypes = {**BATCH_DTYPES, **{key: np.dtype(np.float32) for key in extra_keys}}
    return {key: jax.ShapeDtypeStruct((batch_size, seq_len), dtype, sharding=sharding) for key, dtype in dtypes.items()}
