"""Train/validation split by a hash of the document key: stable across machines, worker counts
and runs, and computable without reading the document."""

from __future__ import annotations

import hashlib


def key_fraction(key: str, salt: str = "split") -> float:
    """A uniform number in [0, 1) determined by `key`."""
    digest = hashlib.blake2b(f"{salt}\0{key}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def is_validation(key: str, fraction: float) -> bool:
    return key_fraction(key) < fraction
