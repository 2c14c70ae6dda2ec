"""Small shared fixtures for tests: configs and synthetic batches."""

from __future__ import annotations

import numpy as np

from llm.bench.train import synthetic_batch
from llm.config.loading import load_config


def tiny_config(*overrides: str):
    return load_config("configs/tiny.py", list(overrides))


def random_batch(vocab: int, batch: int, seq_len: int, seed: int = 0, packed: bool = False) -> dict:
    """A batch in the pipeline's format; `packed` puts two documents in each row."""
    out = synthetic_batch(vocab, batch, seq_len, seed)
    if packed:
        cut = seq_len // 3
        out["segment_ids"][:, cut:] = 2
        out["positions"][:, cut:] = np.arange(seq_len - cut)
    return out
