"""Preference batches for DPO-style losses: one (chosen, rejected) pair per row, unpacked.

Each side is a padded row with the same fields as a training batch, prefixed `chosen_` /
`rejected_`: inputs, targets, segment_ids (1 = real token, 0 = padding), positions, loss_mask
(assistant tokens of the answer only). Both sides share the prompt through the chat template.
"""

from __future__ import annotations

import grain
import ml_collections
import numpy as np

from llm.data.batch import empty_batch
from llm.data.encode import Encoded
from llm.data.formats import EncodedPair, PreferenceEncoder, chat_template
from llm.data.pipeline import DataIterator, iterator_meta, build_tokenizer, check_batching, encoded_stream
from llm.errors import ConfigError

SIDES = ("chosen", "rejected")


def pad_side(encoded: Encoded, seq_len: int) -> dict[str, np.ndarray]:
    """One conversation as a padded row; tokens beyond seq_len+1 are cut (long_documents=truncate)."""
    tokens, weights = encoded.tokens[: seq_len + 1], encoded.weights[: seq_len + 1]
    n = len(tokens) - 1
    row = empty_batch((seq_len,))
    row["inputs"][:n] = tokens[:-1]
    row["targets"][:n] = tokens[1:]
    row["segment_ids"][:n] = 1
    row["positions"][:n] = np.arange(n, dtype=np.int32)
    row["loss_mask"][:n] = weights[1:]
    return row


class _PadPair:
    def __init__(self, seq_len: int):
        self.seq_len = seq_len

    def __call__(self, pair: EncodedPair) -> dict[str, np.ndarray]:
        out = {}
        for side in SIDES:
            for key, value in pad_side(getattr(pair, side), self.seq_len).items():
                out[f"{side}_{key}"] = value
        return out


def make_preference_batches(
    config: ml_collections.ConfigDict, split: str = "train", process_index: int = 0, process_count: int = 1
) -> DataIterator:
    """Batches of (data.batch_size // process_count) preference pairs, resumable like make_batches."""
    rows = check_batching(config, process_index, process_count)
    d = config.data
    if d.source == "synthetic":
        raise ConfigError("preference batches need a preference JSONL source, not data.source=synthetic")
    tokenizer = build_tokenizer(config)
    encoder = PreferenceEncoder(tokenizer, chat_template(d.chat_template), d.prompt_field)
    limit = None if d.long_documents == "truncate" else d.seq_len + 1
    it, policy = encoded_stream(config, split, process_index, process_count, encoder, limit)
    it = it.map(_PadPair(d.seq_len)).batch(rows, drop_remainder=True)
    if d.prefetch > 0:
        it = grain.experimental.ThreadPrefetchIterDataset(it, prefetch_buffer_size=d.prefetch)
    return DataIterator(it, policy, iterator_meta(config, split, process_index, process_count))
