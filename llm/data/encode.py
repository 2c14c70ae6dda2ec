"""Record -> token ids and per-token loss weights, the step that runs in Grain workers.

Pretraining records are plain text (or a dict holding `text_field`); SFT records are rendered
through the chat template (llm.data.formats) so only assistant tokens carry loss. Anything that
cannot be encoded becomes a `BadRecord` for the policy stage to count or raise.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from llm.data.sources import BadRecord
from llm.data.tokenizer import Tokenizer


@dataclasses.dataclass
class Encoded:
    """One document's tokens; `weights[i]` = 1 when token i is a training target."""

    tokens: np.ndarray
    weights: np.ndarray


def text_of(record: Any, field: str, where: str) -> str | BadRecord:
    """The document text of a pretraining record, or why there is none."""
    if isinstance(record, BadRecord):
        return record
    if isinstance(record, str):
        text = record
    elif isinstance(record, dict):
        if field not in record:
            return BadRecord(f"missing field {field!r} (has {', '.join(sorted(record)[:5])}); set data.text_field", where)
        text = record[field]
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                return BadRecord("non-UTF-8 bytes", where)
        if not isinstance(text, str):
            return BadRecord(f"field {field!r} is a {type(text).__name__}, expected a string", where)
    else:
        return BadRecord(f"record is a {type(record).__name__}", where)
    if not text.strip():
        return BadRecord("empty document", where)
    return text


def encode_array(tokenizer: Tokenizer, text: str) -> np.ndarray:
    fast = getattr(tokenizer, "encode_array", None)
    if fast is not None:
        return fast(text)
    return np.asarray(tokenizer.encode(text), dtype=np.int32)


class PretrainEncoder:
    """Text -> [BOS] tokens [EOS] (BOS/EOS only where the tokenizer has them); every token is a target."""

    def __init__(self, tokenizer: Tokenizer, text_field: str = "text", add_bos: bool = True, add_eos: bool = True):
        self.tokenizer = tokenizer
        self.text_field = text_field
        self.add_bos = add_bos and tokenizer.bos_id is not None
        self.add_eos = add_eos and tokenizer.eos_id is not None

    def __call__(self, record: Any, where: str) -> Encoded | BadRecord:
        text = text_of(record, self.text_field, where)
        if isinstance(text, BadRecord):
            return text
        ids = encode_array(self.tokenizer, text)
        parts = []
        if self.add_bos:
            parts.append(np.asarray([self.tokenizer.bos_id], np.int32))
        parts.append(ids)
        if self.add_eos:
            parts.append(np.asarray([self.tokenizer.eos_id], np.int32))
        tokens = np.concatenate(parts) if len(parts) > 1 else ids
        if len(tokens) < 2:
            return BadRecord("document shorter than 2 tokens", where)
        return Encoded(tokens, np.ones(len(tokens), np.float32))
