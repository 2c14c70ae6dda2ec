"""Planted evaluation passages (13-gram overlaps) are found; shorter overlaps are not."""

from __future__ import annotations

import json

import numpy as np

from llm.data.curate.decontam import Decontaminator


def test_planted_contamination_is_found(tmp_path):
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(3000)]
    passages = [" ".join(rng.choice(vocab, 40)) for _ in range(10)]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"question": p, "answer": "x"}) + "\n" for p in passages[:5]))
    (tmp_path / "eval.txt").write_text("\n\n".join(passages[5:]))
    guard = Decontaminator(str(tmp_path / "eval.*"), n=13)
    for i, p in enumerate(passages):
        words = p.split()
        start = int(rng.integers(0, len(words) - 13))
        chunk = " ".join(words[start : start + 13]).upper()  # case and punctuation do not hide it
        doc = " ".join(rng.choice(vocab, 50)) + f" {chunk}, " + " ".join(rng.choice(vocab, 50))
        assert guard.overlaps(doc) >= 1, i
        short = " ".join(words[start : start + 12])
        clean = " ".join(rng.choice(vocab, 50)) + f" {short} " + " ".join(rng.choice(vocab, 50))
        assert guard.overlaps(clean) == 0, i
