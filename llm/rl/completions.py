"""A sampled completion cut where it ends: after the first stop string or EOS.

The sampler stops a row on EOS and on each stop string's standalone token sequence; the text
check here also finds a stop string that the tokenizer spelled differently in context (a
sentencepiece merge), and cuts the tokens after it. The tokens kept include the ones that
spell the stop (the policy is trained to emit it); the text the rewards see excludes it.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from llm.data.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class CutCompletion:
    tokens: list[int]  # kept tokens: through the stop (EOS or the stop string's last token)
    text: str  # what the rewards score: the decoded text before the stop
    ended: bool  # False: it ran into max_new_tokens without stopping (TRL's "clipped")


def _decoded_length(tokenizer: Tokenizer, tokens: Sequence[int], chars: int) -> int:
    """The fewest leading tokens whose text is at least `chars` long (binary search: decoded
    length only grows with more tokens)."""
    lo, hi = 1, len(tokens)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(tokens[:mid])) >= chars:
            hi = mid
        else:
            lo = mid + 1
    return lo


def cut_completion(tokenizer: Tokenizer, tokens: Sequence[int], stops: Sequence[str], eos_id: int | None) -> CutCompletion:
    tokens = [int(t) for t in tokens]
    ended = False
    if eos_id is not None and eos_id in tokens:
        tokens = tokens[: tokens.index(eos_id) + 1]
        ended = True
    body = tokens[:-1] if ended else tokens
    text = tokenizer.decode(body)
    hits = [(text.find(s), s) for s in stops if s in text]
    if hits:
        at, stop = min(hits)
        keep = _decoded_length(tokenizer, body, at + len(stop))
        return CutCompletion(tokens=body[:keep], text=text[:at], ended=True)
    return CutCompletion(tokens=tokens, text=text, ended=ended)


def penalize_unfinished(rewards: np.ndarray, ended: np.ndarray, penalty: float) -> np.ndarray:
    """Rewards minus `penalty` where the completion never stopped (rl.missing_eos_penalty, as
    TRL's); unscorable (NaN) rewards stay NaN."""
    out = np.asarray(rewards, np.float32).copy()
    if penalty:
        out[~np.asarray(ended, bool)] -= np.float32(penalty)
    return out
