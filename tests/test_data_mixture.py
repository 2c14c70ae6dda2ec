"""Weighted mixtures: spec parsing, fixed proportions through the pipeline, held-out splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llm.config.loading import load_config
from llm.data.mixture import MixtureEntry, parse_mixture
from llm.data.pipeline import make_batches
from llm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def documents(b) -> list[bytes]:
    out = []
    for i in range(b["inputs"].shape[0]):
        seg = b["segment_ids"][i]
        for s in np.unique(seg[seg > 0]):
            idx = np.flatnonzero(seg == s)
            out.append(bytes(b["inputs"][i][idx].tolist() + [int(b["targets"][i][idx[-1]])]))
    return out


def test_parse_mixture():
    assert parse_mixture(["jsonl:/a/*.jsonl@0.7", "text:b@0.3", "parquet:c.parquet"]) == [
        MixtureEntry("jsonl", "/a/*.jsonl", 0.7),
        MixtureEntry("text", "b", 0.3),
        MixtureEntry("parquet", "c.parquet", 1.0),
    ]
    with pytest.raises(ConfigError, match="kind 'csv'"):
        parse_mixture(["csv:x@1"])
    with pytest.raises(ConfigError, match="not a number"):
        parse_mixture(["text:x@lots"])
    with pytest.raises(ConfigError, match="no kind"):
        parse_mixture(["x.txt"])


def test_mixture_keeps_its_proportions(tmp_path):
    (tmp_path / "a").mkdir()
    for i in range(40):
        (tmp_path / "a" / f"{i}.txt").write_text(f"A{i:03d}")
    with open(tmp_path / "b.jsonl", "w") as f:
        for i in range(40):
            f.write(json.dumps({"text": f"B{i:03d}"}) + "\n")
    config = load_config(ROOT / "configs/tiny.py")
    with config.unlocked():
        config.data.mixture = (f"text:{tmp_path}/a/*.txt@3", f"jsonl:{tmp_path}/b.jsonl@1")
        config.data.eval_fraction = 0.1
        config.data.seq_len = 64
        config.data.batch_size = 8
    it = make_batches(config)
    counts = {"A": 0, "B": 0}
    train_docs = set()
    for _ in range(25):
        b = next(it)
        for doc in documents(b):
            counts[doc[:1].decode()] += 1
            train_docs.add(doc)
    share = counts["A"] / (counts["A"] + counts["B"])
    assert sum(counts.values()) > 500
    assert abs(share - 0.75) < 0.05, counts
    val = make_batches(config, "validation")
    val_docs = set(documents(next(val)))
    assert len(val_docs) >= 2 and not val_docs & train_docs
    assert len(train_docs) == 80 - len(val_docs)


def test_mixture_and_path_together_is_an_error(tmp_path):
    config = load_config(ROOT / "configs/tiny.py")
    with config.unlocked():
        config.data.mixture = ("text:x@1",)
        config.data.path = "y"
    with pytest.raises(ConfigError, match="either data.mixture or data.path"):
        make_batches(config)
