"""Exact and near deduplication find planted duplicates with precision and recall >= 0.95."""

from __future__ import annotations

import numpy as np
import pytest

from llm.data.curate.dedup import ExactDedup, Index, MinHasher, NearDedup
from llm.data.curate.hashing import ngram_hashes, words


def vocabulary(rng, n=4000) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return ["".join(rng.choice(letters, rng.integers(3, 9))) for _ in range(n)]


def document(rng, vocab, lo=150, hi=400) -> list[str]:
    return [vocab[i] for i in rng.integers(0, len(vocab), rng.integers(lo, hi))]


def render(tokens: list[str], rng) -> str:
    out, line = [], []
    for t in tokens:
        line.append(t)
        if rng.random() < 0.08:
            out.append(" ".join(line) + ".")
            line = []
    out.append(" ".join(line))
    return "\n".join(out)


def near_copy(tokens: list[str], rng, vocab, rate=0.01) -> list[str]:
    """Small edits: substitute, delete or insert about `rate` of the words."""
    out = list(tokens)
    for _ in range(max(1, int(len(out) * rate))):
        i = int(rng.integers(len(out)))
        op = rng.integers(3)
        if op == 0:
            out[i] = vocab[int(rng.integers(len(vocab)))]
        elif op == 1 and len(out) > 10:
            del out[i]
        else:
            out.insert(i, vocab[int(rng.integers(len(vocab)))])
    return out


def true_jaccard(a: str, b: str, n=5) -> float:
    x, y = set(ngram_hashes(words(a), n).tolist()), set(ngram_hashes(words(b), n).tolist())
    return len(x & y) / len(x | y)


@pytest.fixture(scope="module")
def planted():
    """400 originals, then 60 exact copies, 60 near copies and 60 half-overlapping decoys."""
    rng = np.random.default_rng(0)
    vocab = vocabulary(rng)
    originals = [document(rng, vocab) for _ in range(400)]
    docs = [(render(t, rng), "original", None) for t in originals]
    for i in rng.choice(400, 60, replace=False):
        docs.append((docs[i][0], "exact", int(i)))
    for i in rng.choice(400, 60, replace=False):
        tokens = near_copy(originals[i], rng, vocab)
        docs.append((render(tokens, rng), "near", int(i)))  # new line breaks too
    for i in rng.choice(400, 60, replace=False):
        half = originals[i][: len(originals[i]) // 2] + document(rng, vocab, 100, 200)
        docs.append((render(half, rng), "decoy", int(i)))
    order = list(range(400)) + list(400 + rng.permutation(180))
    return [docs[k] for k in order]


def test_planted_duplicates_precision_and_recall(planted, tmp_path):
    index = Index(tmp_path / "idx.sqlite")
    exact, near = ExactDedup(index), NearDedup(index, threshold=0.8)
    found = {"exact": set(), "near": set()}
    for doc_id, (text, _kind, _src) in enumerate(planted):
        if exact.seen(text, doc_id) is not None:
            found["exact"].add(doc_id)
        elif near.seen(text, doc_id) is not None:
            found["near"].add(doc_id)
    index.close()
    truth = {kind: {i for i, (_t, k, _s) in enumerate(planted) if k == kind} for kind in ("exact", "near")}
    for kind in ("exact", "near"):
        tp = len(found[kind] & truth[kind])
        precision = tp / max(1, len(found[kind]))
        recall = tp / len(truth[kind])
        assert precision >= 0.95 and recall >= 0.95, (kind, precision, recall)
    decoys = {i for i, (_t, k, _s) in enumerate(planted) if k == "decoy"}
    assert not (found["exact"] | found["near"]) & decoys


def test_planted_pairs_really_are_near_and_decoys_are_not(planted):
    originals = [t for t, k, _ in planted if k == "original"]
    near = [true_jaccard(t, originals[s]) for t, k, s in planted if k == "near"]
    decoy = [true_jaccard(t, originals[s]) for t, k, s in planted if k == "decoy"]
    assert min(near) >= 0.8 and max(decoy) < 0.5


def test_minhash_estimates_jaccard():
    rng = np.random.default_rng(1)
    vocab = vocabulary(rng)
    hasher = MinHasher(num_perm=256)
    errors = []
    for _ in range(20):
        base = document(rng, vocab, 300, 301)
        other = near_copy(base, rng, vocab, rate=float(rng.uniform(0.01, 0.1)))
        a, b = " ".join(base), " ".join(other)
        estimate = float(np.mean(hasher.signature(a) == hasher.signature(b)))
        errors.append(abs(estimate - true_jaccard(a, b)))
    assert np.mean(errors) < 0.04


def test_keeps_the_first_copy_and_names_it(tmp_path):
    index = Index(tmp_path / "idx.sqlite")
    exact = ExactDedup(index)
    assert exact.seen("a doc", 7) is None
    assert exact.seen("a doc", 9) == 7
    index.close()
    assert not (tmp_path / "idx.sqlite").exists()
