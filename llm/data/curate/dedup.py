"""Exact (content hash) and near (MinHash + LSH) deduplication that keeps the first copy.

The indexes live in an on-disk SQLite database with a bounded page cache, so memory does not
grow with the corpus; only kept documents are indexed.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np

from llm.data.curate.hashing import ngram_hashes, words
from llm.errors import ConfigError


class Index:
    """The SQLite file holding exact hashes, LSH buckets and MinHash signatures."""

    def __init__(self, path: str | Path, cache_mb: int = 64):
        self.path = Path(path)
        if self.path.exists():
            self.path.unlink()
        self.db = sqlite3.connect(str(self.path))
        self.db.execute(f"PRAGMA cache_size=-{int(cache_mb) * 1024}")
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE exact (h BLOB PRIMARY KEY, doc INTEGER) WITHOUT ROWID")
        self.db.execute("CREATE TABLE bucket (key INTEGER, doc INTEGER)")
        self.db.execute("CREATE INDEX bucket_key ON bucket (key)")
        self.db.execute("CREATE TABLE sig (doc INTEGER PRIMARY KEY, sig BLOB)")

    def close(self) -> None:
        self.db.close()
        if self.path.exists():
            self.path.unlink()


class ExactDedup:
    def __init__(self, index: Index):
        self.db = index.db

    def seen(self, text: str, doc: int) -> int | None:
        """The id of an earlier identical document, else None (and this one is recorded)."""
        h = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        row = self.db.execute("SELECT doc FROM exact WHERE h = ?", (h,)).fetchone()
        if row is not None:
            return int(row[0])
        self.db.execute("INSERT INTO exact VALUES (?, ?)", (h, doc))
        return None


class MinHasher:
    """num_perm MinHash values over word shingles with multiply-shift hash functions."""

    def __init__(self, num_perm: int = 128, shingle: int = 5, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 2**63, num_perm, dtype=np.uint64) | np.uint64(1)
        self.b = rng.integers(0, 2**63, num_perm, dtype=np.uint64)
        self.shingle = shingle

    def signature(self, text: str) -> np.ndarray:
        h = np.unique(ngram_hashes(words(text), self.shingle))
        if len(h) == 0:
            return np.full(len(self.a), np.iinfo(np.uint32).max, np.uint32)
        with np.errstate(over="ignore"):
            permuted = (h[:, None] * self.a[None, :] + self.b[None, :]) >> np.uint64(32)
        return permuted.min(axis=0).astype(np.uint32)


class NearDedup:
    """LSH over MinHash bands: a document whose estimated Jaccard similarity with an indexed
    one reaches `threshold` is a near duplicate of it."""

    def __init__(self, index: Index, threshold: float = 0.8, num_perm: int = 128, bands: int = 16, shingle: int = 5):
        if num_perm % bands:
            raise ConfigError(f"data.curate.num_perm={num_perm} is not a multiple of data.curate.bands={bands}")
        self.db = index.db
        self.threshold = threshold
        self.bands = bands
        self.rows = num_perm // bands
        self.hasher = MinHasher(num_perm, shingle)

    def _keys(self, sig: np.ndarray) -> list[int]:
        keys = []
        for b in range(self.bands):
            digest = hashlib.blake2b(bytes([b]) + sig[b * self.rows : (b + 1) * self.rows].tobytes(), digest_size=8).digest()
            keys.append(int.from_bytes(digest, "big", signed=True))
        return keys

    def seen(self, text: str, doc: int) -> tuple[int, float] | None:
        """(earlier document, estimated similarity) for a near duplicate, else None (and this
        document is indexed)."""
        sig = self.hasher.signature(text)
        keys = self._keys(sig)
        marks = ",".join("?" * len(keys))
        candidates = [r[0] for r in self.db.execute(f"SELECT DISTINCT doc FROM bucket WHERE key IN ({marks})", keys)]
        best = None
        for other in candidates:
            (blob,) = self.db.execute("SELECT sig FROM sig WHERE doc = ?", (other,)).fetchone()
            similarity = float(np.mean(np.frombuffer(blob, np.uint32) == sig))
            if similarity >= self.threshold and (best is None or similarity > best[1]):
                best = (other, similarity)
        if best is not None:
            return best
        self.db.executemany("INSERT INTO bucket VALUES (?, ?)", [(k, doc) for k in keys])
        self.db.execute("INSERT INTO sig VALUES (?, ?)", (doc, sig.tobytes()))
        return None
