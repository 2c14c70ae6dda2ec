"""Gopher / C4-style document quality heuristics with thresholds from config.data.curate.

Words are whitespace-separated tokens (as in Gopher); the n-gram statistics are computed with
numpy over word ids so a 100 kB document costs milliseconds.
"""

from __future__ import annotations

import zlib
from collections import Counter

import ml_collections
import numpy as np

_SYMBOLS = ("#", "...", "\u2026")
_PUNCT_END = (".", "!", "?", '"', "'", ":", ";", ")", "]", "}")
_MULT = np.uint64(0x9E3779B97F4A7C15)


def _gram_ids(ids: np.ndarray, n: int) -> np.ndarray:
    """Dense ids of the word n-grams (via 64-bit rolling hashes of the word ids)."""
    count = len(ids) - n + 1
    h = np.zeros(count, np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = (h * _MULT) ^ (ids[k : k + count].astype(np.uint64) + np.uint64(1))
            h ^= h >> np.uint64(29)
    _, inverse = np.unique(h, return_inverse=True)
    return inverse.reshape(-1)


def quality_stats(text: str) -> dict[str, float]:
    words = text.split()
    n_words = len(words)
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    stats = {
        "chars": len(text),
        "words": n_words,
        "mean_word_len": sum(map(len, words)) / n_words if n_words else 0.0,
        "symbol_word_ratio": sum(text.count(s) for s in _SYMBOLS) / n_words if n_words else 0.0,
        "punct_line_frac": sum(line.endswith(_PUNCT_END) for line in lines) / len(lines) if lines else 0.0,
        "dup_line_frac": 0.0,
        "top_ngram_frac": 0.0,
        "dup_ngram_frac": 0.0,
    }
    if lines:
        counts = Counter(lines)
        stats["dup_line_frac"] = sum(c for c in counts.values() if c > 1) / len(lines)
    if n_words < 2:
        return stats
    ids = np.fromiter(map(zlib.crc32, map(str.encode, words)), np.int64, n_words)  # word ids (hashes)
    lengths = np.fromiter(map(len, words), np.int64, n_words)
    total_chars = int(lengths.sum()) or 1
    # Most frequent word 2-gram: its occurrences times its length, over all word characters.
    bigrams = _gram_ids(ids, 2)
    counts = np.bincount(bigrams)
    top = int(counts.argmax())
    if counts[top] > 1:
        first = int(np.flatnonzero(bigrams == top)[0])
        stats["top_ngram_frac"] = counts[top] * int(lengths[first] + lengths[first + 1]) / total_chars
    # Characters covered by 5-grams that occur more than once.
    if n_words >= 5:
        grams = _gram_ids(ids, 5)
        repeated = (np.bincount(grams) > 1)[grams].astype(np.int64)
        covered = np.convolve(repeated, np.ones(5, np.int64))[:n_words] > 0
        stats["dup_ngram_frac"] = int(lengths[covered].sum()) / total_chars
    return stats


def quality_reason(stats: dict[str, float], q: ml_collections.ConfigDict) -> tuple[str, str] | None:
    """(rule, message with the value and threshold) of the first failed rule, or None."""
    checks = (
        ("chars", stats["chars"] < q.min_chars, f"chars {stats['chars']} < min_chars {q.min_chars}"),
        ("chars", stats["chars"] > q.max_chars, f"chars {stats['chars']} > max_chars {q.max_chars}"),
        ("words", stats["words"] < q.min_words, f"words {stats['words']} < min_words {q.min_words}"),
        ("words", stats["words"] > q.max_words, f"words {stats['words']} > max_words {q.max_words}"),
        ("mean_word_len", not q.min_mean_word_len <= stats["mean_word_len"] <= q.max_mean_word_len, f"mean word length {stats['mean_word_len']:.1f} outside [{q.min_mean_word_len}, {q.max_mean_word_len}]"),
        ("symbol_word_ratio", stats["symbol_word_ratio"] > q.max_symbol_word_ratio, f"symbol/word ratio {stats['symbol_word_ratio']:.2f} > {q.max_symbol_word_ratio}"),
        ("punct_line_frac", stats["punct_line_frac"] < q.min_punct_line_frac, f"lines ending in punctuation {stats['punct_line_frac']:.2f} < {q.min_punct_line_frac}"),
        ("dup_line_frac", stats["dup_line_frac"] > q.max_dup_line_frac, f"duplicated lines {stats['dup_line_frac']:.2f} > {q.max_dup_line_frac}"),
        ("top_ngram_frac", stats["top_ngram_frac"] > q.max_top_ngram_frac, f"top 2-gram share {stats['top_ngram_frac']:.2f} > {q.max_top_ngram_frac}"),
        ("dup_ngram_frac", stats["dup_ngram_frac"] > q.max_dup_ngram_frac, f"duplicated 5-gram share {stats['dup_ngram_frac']:.2f} > {q.max_dup_ngram_frac}"),
    )
    for name, failed, message in checks:
        if failed:
            return name, message
    return None
