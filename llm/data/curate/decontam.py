"""Decontamination: drop training documents that share a word 13-gram with evaluation data."""

from __future__ import annotations

import json

import numpy as np

from llm.data.curate.hashing import ngram_hashes, words
from llm.data.sources import expand_paths, open_file


def _eval_texts(path: str):
    with open_file(path) as f:
        data = f.read().decode("utf-8", errors="replace")
    if path.endswith(".jsonl"):
        for line in data.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                yield line
                continue
            yield from _strings(record)
    else:
        yield data


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


class Decontaminator:
    """Sorted 13-gram hashes of every string in the evaluation files (JSONL: all string fields)."""

    def __init__(self, pattern: str, n: int = 13):
        self.n = n
        files, _ = expand_paths(pattern, "data.curate.decontaminate")
        hashes = [ngram_hashes(words(t), n) for path in files for t in _eval_texts(path) if len(words(t)) >= n]
        self.table = np.unique(np.concatenate(hashes)) if hashes else np.zeros(0, np.uint64)
        self.files = files

    def overlaps(self, text: str) -> int:
        """How many of the document's n-grams occur in the evaluation data."""
        tokens = words(text)
        if len(tokens) < self.n or len(self.table) == 0:
            return 0
        h = ngram_hashes(tokens, self.n)
        pos = np.searchsorted(self.table, h)
        pos[pos == len(self.table)] = 0
        return int(np.sum(self.table[pos] == h))
