"""Preference pairs packed into rows with segment ids, so no compute is spent on padding.

Pair k of a row holds two segments: id 2k+1 is prompt+chosen, 2k+2 is prompt+rejected, each with
its own positions from 0 (the model's segment mask keeps them apart). A pair never spans two
rows. Rows are filled first-fit in the epoch's order; batch k is a pure function of (seed, k),
so a resumed run reads exactly the batches it would have read.

Two layouts:
- `policy` (DPO family): inputs/targets shifted by one, `loss_mask` 1 on the answer's targets;
  optional extra (rows, seq_len) f32 arrays carry per-sequence values at each segment's first
  position (the reference policy's log-prob sums: `ref_logps`).
- `reward` (reward models): the sequence unshifted, `loss_mask` 1 at its last token, where the
  reward head reads the hidden state; `margin` carries each pair's margin at its chosen segment.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from llm.data.batch import empty_batch
from llm.data.pairs import TokenPair
from llm.errors import UserError

STATE_VERSION = 1
LAYOUTS = ("policy", "reward")
_OPEN_ROWS = 64  # rows kept open for first-fit: bounds the planning cost, costs ~nothing in fill


def pair_positions(pair: TokenPair, layout: str) -> int:
    """Row positions the pair takes (both sequences)."""
    shift = 1 if layout == "policy" else 0
    return 2 * len(pair.prompt) + len(pair.chosen) + len(pair.rejected) - 2 * shift


def plan_rows(sizes: Sequence[int], order: Sequence[int], seq_len: int, max_pairs: int) -> list[list[int]]:
    """First-fit of the pairs, in `order`, into rows of `seq_len` positions, at most `max_pairs`
    per row; rows are emitted in the order they were opened."""
    rows: list[list[int]] = []
    free: list[int] = []
    open_rows: list[int] = []
    for i in order:
        size = sizes[i]
        if size > seq_len:
            raise UserError(f"a preference pair needs {size} positions but data.seq_len={seq_len}; raise data.seq_len")
        for r in open_rows:
            if free[r] >= size and len(rows[r]) < max_pairs:
                rows[r].append(i)
                free[r] -= size
                break
        else:
            rows.append([i])
            free.append(seq_len - size)
            open_rows.append(len(rows) - 1)
            if len(open_rows) > _OPEN_ROWS:
                open_rows.pop(0)
        open_rows = [r for r in open_rows if free[r] > 0 and len(rows[r]) < max_pairs]
    return rows


def fill_row(batch: dict, extras: dict, row: int, pairs: Sequence[TokenPair], members: Sequence[int], layout: str,
             values: dict[str, np.ndarray] | None = None) -> None:
    """Write the pairs `members` into row `row` of `batch` (in place). `values[name]` is an
    (n_pairs, 2) array of per-sequence values placed at each segment's first position in
    `extras[name]`."""
    at = 0
    for k, i in enumerate(members):
        pair = pairs[i]
        for side, answer in enumerate((pair.chosen, pair.rejected)):
            seq = np.concatenate([pair.prompt, answer])
            seg = 2 * k + side + 1
            if layout == "policy":
                n = len(seq) - 1
                sl = slice(at, at + n)
                batch["inputs"][row, sl] = seq[:-1]
                batch["targets"][row, sl] = seq[1:]
                batch["loss_mask"][row, at + len(pair.prompt) - 1 : at + n] = 1.0
            else:
                n = len(seq)
                sl = slice(at, at + n)
                batch["inputs"][row, sl] = seq
                batch["loss_mask"][row, at + n - 1] = 1.0
                if "margin" in extras and side == 0:
                    extras["margin"][row, at + n - 1] = pair.margin
            batch["segment_ids"][row, sl] = seg
            batch["positions"][row, sl] = np.arange(n)
            for name, table in (values or {}).items():
                extras[name][row, at] = table[i, side]
            at += n


class PairBatches:
    """Packed preference batches. Training: endless, reshuffled each epoch by (seed, epoch).
    Validation: one pass in order, the last batch filled with empty rows. Each process takes rows
    p, p+P, ... of the global batch. `values` (name -> (n_pairs, 2) array, settable later, e.g.
    the reference log-probs once computed) become extra batch arrays."""

    def __init__(self, pairs: Sequence[TokenPair], *, rows: int, seq_len: int, max_pairs: int, layout: str, seed: int,
                 train: bool, pad_id: int = 0, process_index: int = 0, process_count: int = 1,
                 values: dict[str, np.ndarray] | None = None, with_margin: bool = False):
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
        if rows % process_count:
            raise UserError(f"data.batch_size={rows} rows do not split over {process_count} processes; use a multiple")
        if not pairs:
            raise UserError("no preference pairs to batch; check the data")
        self.pairs, self.rows, self.seq_len, self.max_pairs = pairs, rows, seq_len, max_pairs
        self.layout, self.seed, self.train, self.pad_id = layout, seed, train, pad_id
        self.process_index, self.process_count = process_index, process_count
        self.values = values if values is not None else {}  # shared: values added later reach the batches
        self.with_margin = with_margin
        self.sizes = [pair_positions(p, layout) for p in pairs]
        self.batches = 0
        self._epoch: tuple[int, list[list[int]]] | None = None
        self._starts = [0]
        self._eval_rows = None if train else plan_rows(self.sizes, range(len(pairs)), seq_len, max_pairs)

    # -- which pairs go where ------------------------------------------------------------------
    def _epoch_rows(self, epoch: int) -> list[list[int]]:
        if self._epoch is None or self._epoch[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))
            self._epoch = (epoch, plan_rows(self.sizes, order, self.seq_len, self.max_pairs))
        return self._epoch[1]

    def _epoch_start(self, epoch: int) -> int:
        """Stream index of the first row of `epoch` (epochs differ slightly in row count)."""
        while len(self._starts) <= epoch:
            e = len(self._starts) - 1
            self._starts.append(self._starts[-1] + len(self._epoch_rows(e)))
        return self._starts[epoch]

    def global_rows(self, k: int) -> list[list[int]]:
        """The pair indices of each row of global batch k ([] = an empty row)."""
        if not self.train:
            rows = self._eval_rows[k * self.rows : (k + 1) * self.rows]
            return rows + [[] for _ in range(self.rows - len(rows))]
        start = k * self.rows
        epoch = 0
        while self._epoch_start(epoch + 1) <= start:
            epoch += 1
        out, offset = [], start - self._epoch_start(epoch)
        while len(out) < self.rows:
            out.extend(self._epoch_rows(epoch)[offset : offset + self.rows - len(out)])
            epoch, offset = epoch + 1, 0
        return out

    @property
    def eval_batches(self) -> int:
        """Global batches in one validation pass."""
        return -(-len(self._eval_rows) // self.rows) if self._eval_rows is not None else 0

    # -- arrays ------------------------------------------------------------------------------
    def make_batch(self, rows: list[list[int]]) -> dict[str, np.ndarray]:
        batch = empty_batch((len(rows), self.seq_len))
        batch["inputs"][:] = self.pad_id
        extras = {name: np.zeros((len(rows), self.seq_len), np.float32) for name in self.values}
        if self.with_margin:
            extras["margin"] = np.zeros((len(rows), self.seq_len), np.float32)
        for r, members in enumerate(rows):
            fill_row(batch, extras, r, self.pairs, members, self.layout, self.values)
        batch.update(extras)
        return batch

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        if not self.train and self.batches >= self.eval_batches:
            raise StopIteration
        rows = self.global_rows(self.batches)[self.process_index :: self.process_count]
        self.batches += 1
        return self.make_batch(rows)

    def get_state(self) -> dict:
        return {"version": STATE_VERSION, "batches": self.batches, "seed": self.seed, "pairs": len(self.pairs)}

    def set_state(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION or state.get("seed") != self.seed or state.get("pairs") != len(self.pairs):
            raise UserError("the data state in this checkpoint is from other preference data or settings; use a fresh --workdir")
        self.batches = int(state["batches"])
