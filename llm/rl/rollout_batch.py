"""Rollouts as training rows: prompt + completion per row, right-padded to the step's length,
the loss mask on the completion's tokens only, and the per-row values a policy loss reads
(advantages, old / reference / sampler log-probs) as (rows, length) f32 arrays like every other
batch key, so one batch sharding places them all.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from llm.data.batch import empty_batch
from llm.errors import UserError


def rollout_rows(prompts: Sequence[np.ndarray], completions: Sequence[Sequence[int]], seq_len: int) -> dict[str, np.ndarray]:
    """One row per (prompt, completion): inputs/targets shifted by one, positions from 0, segment
    1 on real tokens, loss_mask on the targets that are completion tokens."""
    batch = empty_batch((len(prompts), seq_len))
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        seq = np.concatenate([np.asarray(prompt, np.int32), np.asarray(completion, np.int32)])
        n = len(seq) - 1
        if n > seq_len:
            raise UserError(f"a rollout of {n + 1} tokens does not fit data.seq_len={seq_len}; lower rl.max_prompt_tokens or rl.max_new_tokens")
        batch["inputs"][i, :n] = seq[:-1]
        batch["targets"][i, :n] = seq[1:]
        batch["positions"][i, :n] = np.arange(n)
        batch["segment_ids"][i, :n] = 1
        batch["loss_mask"][i, len(prompt) - 1 : n] = 1
    return batch


def token_values(rows: int, seq_len: int, values: Sequence[Sequence[float]], starts: Sequence[int]) -> np.ndarray:
    """(rows, seq_len) f32 with row i's values placed from column starts[i] (per-token values
    of the completion, aligned with its targets)."""
    out = np.zeros((rows, seq_len), np.float32)
    for i, (row, start) in enumerate(zip(values, starts)):
        row = np.asarray(row, np.float32)[: seq_len - start]
        out[i, start : start + len(row)] = row
    return out


def split_minibatches(batch: dict[str, np.ndarray], n: int) -> list[dict[str, np.ndarray]]:
    """The rollout batch as n optimizer-step batches of consecutive rows (whole groups stay
    together when the group size divides the minibatch)."""
    rows = len(next(iter(batch.values())))
    if rows % n:
        raise UserError(f"a rollout batch of {rows} sequences does not split into rl.steps_per_generation={n} equal minibatches")
    size = rows // n
    return [{k: v[j * size : (j + 1) * size] for k, v in batch.items()} for j in range(n)]


def trimmed_length(segment_ids: np.ndarray, seq_len: int, loss_chunk: int = 0, multiple: int = 16) -> int:
    """The row length a rollout batch is trained at: its longest row rounded up to a multiple of
    `multiple` (past loss_chunk, of loss_chunk, which the chunked log-probs need), at most
    seq_len. Rollouts are mostly far shorter than the longest possible prompt + completion;
    rounding keeps the compiled programs few (at most seq_len / multiple of them)."""
    used = int(np.max(np.nonzero(np.any(segment_ids > 0, axis=0))[0], initial=-1)) + 1
    step = loss_chunk if loss_chunk and used > loss_chunk else max(int(multiple), 1)
    n = max(-(-used // step) * step, step)
    if loss_chunk and used <= loss_chunk:
        n = min(n, loss_chunk)  # the unchunked log-probs cover a row of up to one chunk
    return min(n, int(seq_len))
