"""Fast deterministic word n-gram hashes (numpy, no Python-level loop per n-gram)."""

from __future__ import annotations

import re
import zlib

import numpy as np

_WORDS = re.compile(r"\w+")
_MULT = np.uint64(0x9E3779B97F4A7C15)


def words(text: str) -> list[str]:
    """Lower-cased word tokens: punctuation and whitespace changes do not change n-grams."""
    return _WORDS.findall(text.lower())


def ngram_hashes(tokens: list[str], n: int) -> np.ndarray:
    """uint64 hashes of the word n-grams (one hash of all words when there are fewer than n)."""
    if not tokens:
        return np.zeros(0, np.uint64)
    w = np.fromiter(map(zlib.crc32, map(str.encode, tokens)), np.uint64, len(tokens))
    if len(w) < n:
        n = len(w)
    count = len(w) - n + 1
    h = np.zeros(count, np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = (h * _MULT) ^ w[k : k + count]
            h ^= h >> np.uint64(29)
    return h
