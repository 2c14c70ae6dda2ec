"""Incremental detokenisation for streaming: tokens arrive a few at a time, text must be
printed as soon as it is final.

Decoding each token alone breaks multi-byte characters (byte tokenizer, sentencepiece byte
fallback) and drops the spaces sentencepiece attaches to the next piece, so we decode the whole
row each time and emit the new suffix, holding back a trailing replacement character that a
later byte may still complete.
"""

from __future__ import annotations

from typing import Sequence

from llm.data.tokenizer import Tokenizer

_INCOMPLETE = "\ufffd"


class TextStream:
    def __init__(self, tokenizer: Tokenizer, stop_ids: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.stop_ids = set(int(t) for t in stop_ids)
        self.tokens: list[int] = []
        self.emitted = ""

    def push(self, tokens: Sequence[int]) -> str:
        """Add new tokens; return the text that became final (stop tokens are not shown)."""
        self.tokens.extend(int(t) for t in tokens if int(t) not in self.stop_ids)
        text = self.tokenizer.decode(self.tokens)
        final = text.rstrip(_INCOMPLETE)
        if not final.startswith(self.emitted):  # the decoder rewrote earlier text: wait
            return ""
        new = final[len(self.emitted) :]
        self.emitted = final
        return new

    def flush(self) -> str:
        """Whatever is left once the row is finished (an incomplete character prints as is)."""
        text = self.tokenizer.decode(self.tokens)
        new = text[len(self.emitted) :] if text.startswith(self.emitted) else ""
        self.emitted = text
        return new
