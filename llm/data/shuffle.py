"""An endless, seeded, per-epoch global shuffle as a Grain MapDataset.

Element i is document perm_e[i mod n] of epoch e = i // n, with perm_e a numpy permutation
seeded by (seed, e): pure in (seed, i), O(1) per element after one O(n) permutation per epoch.
Grain's own `shuffle` uses an index cipher that costs ~2 ms per element on datasets of a few
dozen records; the cipher is kept only above `_TABLE_LIMIT` records, where a table would be big.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import grain
import numpy as np

_TABLE_LIMIT = 1 << 26  # 64M records -> 256 MB of int32 permutation per cached epoch


class EpochShuffle(grain.MapDataset):
    """parent (finite) -> endless stream reshuffled each epoch."""

    def __init__(self, parent: grain.MapDataset, seed: int):
        super().__init__(parent)
        self._n = len(parent)
        if self._n == 0:
            raise ValueError("cannot shuffle an empty dataset")
        self._seed = int(seed) % 2**32
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return sys.maxsize

    def __str__(self) -> str:
        return f"EpochShuffle(n={self._n}, seed={self._seed})"

    def _permutation(self, epoch: int) -> np.ndarray:
        perm = self._cache.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self._seed, epoch]).permutation(self._n).astype(np.int32 if self._n < 2**31 else np.int64)
            if len(self._cache) >= 2:  # prefetching can straddle an epoch boundary
                self._cache.pop(min(self._cache))
            self._cache[epoch] = perm
        return perm

    def source_index(self, index: int) -> int:
        epoch, i = divmod(int(index), self._n)
        return int(self._permutation(epoch)[i])

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[self.source_index(index)]

    def _getitems(self, indices: Sequence[int]) -> list[Any]:
        return [self[i] for i in indices]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state


def endless_shuffle(ds: grain.MapDataset, seed: int) -> grain.MapDataset:
    """Endless per-epoch shuffle: the table version, or Grain's cipher for huge datasets."""
    if len(ds) > _TABLE_LIMIT:
        return ds.shuffle(seed=int(seed) % 2**32).repeat(None)
    return EpochShuffle(ds, seed)
