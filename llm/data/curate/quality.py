"""Gopher / C4-style document quality heuristics with thresholds from config.data.curate."""

from __future__ import annotations

import re
from collections import Counter

import ml_collections

_WORD = re.compile(r"\S+")
_SYMBOLS = ("#", "...", "\u2026")
_PUNCT_END = (".", "!", "?", '"', "'", ":", ";", ")", "]", "}")


def quality_stats(text: str) -> dict[str, float]:
    words = _WORD.findall(text)
    n_words = len(words)
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    stats = {
        "chars": len(text),
        "words": n_words,
        "mean_word_len": sum(len(w) for w in words) / n_words if n_words else 0.0,
        "symbol_word_ratio": sum(text.count(s) for s in _SYMBOLS) / n_words if n_words else 0.0,
        "punct_line_frac": sum(line.endswith(_PUNCT_END) for line in lines) / len(lines) if lines else 0.0,
    }
    if lines:
        counts = Counter(lines)
        stats["dup_line_frac"] = sum(c for c in counts.values() if c > 1) / len(lines)
    else:
        stats["dup_line_frac"] = 0.0
    total_chars = sum(len(w) for w in words) or 1
    if n_words >= 2:
        bigrams = Counter(zip(words, words[1:]))
        (top, count) = bigrams.most_common(1)[0]
        stats["top_ngram_frac"] = count * (len(top[0]) + len(top[1])) / total_chars if count > 1 else 0.0
    else:
        stats["top_ngram_frac"] = 0.0
    stats["dup_ngram_frac"] = _duplicated_ngram_chars(words, 5) / total_chars
    return stats


def _duplicated_ngram_chars(words: list[str], n: int) -> int:
    """Characters of words covered by an n-gram that occurs more than once (Gopher)."""
    if len(words) < n:
        return 0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    counts = Counter(grams)
    covered = bytearray(len(words))
    for i, g in enumerate(grams):
        if counts[g] > 1:
            covered[i : i + n] = b"\x01" * n
    return sum(len(w) for w, c in zip(words, covered) if c)


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
