"""lm-eval's few-shot samplers (api/samplers.py). lm-eval draws every doc's examples from ONE
`random.Random(fewshot_seed)` in doc order, so doc i's examples depend on the draws for docs
0..i-1; `SeededSampler` replays that sequence once and remembers each doc's draw."""

from __future__ import annotations

import random
from typing import Sequence

from llm.errors import UserError


def _without(doc: dict, pool: Sequence[dict], n: int | None = None) -> list[dict]:
    out = [x for x in pool if x != doc]
    return out if n is None else out[:n]


class SeededSampler:
    """sampler: default (random, seeded) or first_n. `remove_eval_doc` mirrors lm-eval's test
    `fewshot_split == test_split`: then the evaluated doc never appears among its own examples."""

    def __init__(self, kind: str, pool: list[dict], seed: int | None, remove_eval_doc: bool):
        self.kind, self.pool, self.seed, self.remove = kind, pool, seed, remove_eval_doc
        self._rnd = random.Random(seed)
        self._drawn: list[list[int]] = []  # per eval doc (in order): indices into pool

    def check(self, n: int, where: str) -> None:
        """num_fewshot that the pool cannot serve -> UserError (lm-eval would crash mid-run)."""
        need = n + 1 if (self.remove and self.kind == "default") else n
        if n > 0 and len(self.pool) < need:
            extra = " plus the evaluated doc, which is removed from it" if need > n else ""
            raise UserError(
                f"{where}: num_fewshot {n} needs {need} few-shot docs{extra}, but the few-shot split has {len(self.pool)}; "
                f"use --num-fewshot {max(0, len(self.pool) - (need - n))} or less, or a larger few-shot split"
            )

    def examples(self, doc_id: int, n: int, eval_docs: Sequence[dict]) -> list[dict]:
        if n == 0:
            return []
        if self.kind == "first_n":
            pool = _without(eval_docs[doc_id], self.pool) if self.remove else self.pool
            if n > len(pool):
                raise UserError(f"num_fewshot {n} exceeds the {len(pool)} few-shot docs available; lower it")
            return list(pool[:n])
        while len(self._drawn) <= doc_id:
            self._drawn.append(self._draw(n, eval_docs[len(self._drawn)]))
        return [self.pool[i] for i in self._drawn[doc_id]]

    def _draw(self, n: int, eval_doc: dict) -> list[int]:
        idx = list(range(len(self.pool)))
        if not self.remove:
            return self._rnd.sample(idx, n)
        picked = [i for i in self._rnd.sample(idx, n + 1) if self.pool[i] != eval_doc][:n]
        if len(picked) < n:  # duplicates of eval_doc in the pool: lm-eval resamples without them
            picked = self._rnd.sample([i for i in idx if self.pool[i] != eval_doc], n)
        return picked
