"""The token side of scoring, as lm-eval's Hugging Face backend (HFLM) does it: tokenization
with its special-token rules, the (context, continuation) split, left truncation to the
model's length, rolling windows; and the packing of many requests into few fixed-shape rows.

Packing: a request scores the last c positions of its input (context + continuation[:-1],
truncated on the left to `max_length`). Requests whose inputs share everything before those
positions (the choices of one multiple-choice question) form one *unit*: the shared prefix
once, then each request's few remaining tokens as a branch that sees the prefix and its own
earlier tokens only (a tree mask). Units are packed side by side into rows of a few bucketed
lengths; each unit restarts its positions at 0, so every request is computed exactly as it
would be alone. Pure Python and numpy: no JAX.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Sequence

import numpy as np

from llm.errors import UserError

MIN_ROW = 256  # the shortest packed row: short units share rows of this length


def bucket_length(n: int, minimum: int = 16) -> int:
    """The smallest power of two >= n (and >= minimum)."""
    size = max(int(minimum), 1)
    while size < n:
        size *= 2
    return size


class HFEncoding:
    """HFLM's tokenization over one of our tokenizers (llm.data.tokenizer).

    `encode(text)` adds what the Hugging Face tokenizer's default `encode` adds: for a
    tokenizer.json, its post-processor's special tokens; for our other tokenizers, BOS when the
    model was trained with data.add_bos. A text that already starts with the prefix token's
    text gets none (lm-eval's has_bos_prefix)."""

    def __init__(self, tokenizer, add_bos: bool):
        from llm.interop.hf_tokenizer import HFTokenizer

        self.tokenizer = tokenizer
        self.is_hf = isinstance(tokenizer, HFTokenizer)
        self.add_bos = bool(add_bos) and tokenizer.bos_id is not None
        self.eot_token_id = tokenizer.eos_id
        self.prefix_token_id = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
        self._prefix_text = None if self.prefix_token_id is None else tokenizer.decode([self.prefix_token_id])
        specials = (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
        self._special_ids = {int(i) for i in specials if i is not None}

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        if add_special_tokens is None:
            add_special_tokens = not (self._prefix_text and text.startswith(self._prefix_text))
        if self.is_hf:
            return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))
        ids = list(self.tokenizer.encode(text))
        return [self.tokenizer.bos_id] + ids if add_special_tokens and self.add_bos else ids

    def decode(self, ids: Sequence[int]) -> str:
        """Generated tokens as text without special tokens (HFLM's tok_decode)."""
        if self.is_hf:
            return self.tokenizer.decode(ids, skip_special_tokens=True)
        return self.tokenizer.decode([i for i in ids if int(i) not in self._special_ids])

    def eos_text(self) -> str | None:
        """The end-of-text token as text, what lm-eval adds to every `until` list."""
        return None if self.eot_token_id is None else self.tokenizer.decode([self.eot_token_id])

    def loglikelihood_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) as lm-eval's LM.loglikelihood builds them: trailing
        spaces of the context move to the continuation, the pair is encoded whole and split at
        the context's length; an empty context becomes the prefix token."""
        if context == "":
            cont = self.encode(continuation, add_special_tokens=False)
            if self.prefix_token_id is None:
                raise UserError("an empty context needs a BOS or EOS token to condition on; this tokenizer has neither")
            if not cont:
                raise UserError(f"the continuation {continuation!r} encodes to no tokens; give a non-empty continuation")
            ctx, cont = ([self.prefix_token_id], cont) if self.prefix_token_id != cont[0] else (cont[:1], cont[1:])
        else:
            spaces = len(context) - len(context.rstrip())
            if spaces:
                continuation, context = context[-spaces:] + continuation, context[:-spaces]
            whole = self.encode(context + continuation)
            ctx = self.encode(context)
            cont = whole[len(ctx):]
            if not ctx:
                raise UserError(f"the context {context!r} encodes to no tokens; this tokenizer adds no BOS to condition on")
        if not cont:
            raise UserError(f"the continuation {continuation!r} of context {context[-40:]!r} encodes to no tokens; give a non-empty continuation")
        return ctx, cont


def rolling_windows(tokens: Sequence[int], prefix_token: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """lm-eval's get_rolling_token_windows(context_len=1) + make_disjoint_window: disjoint
    prediction windows covering every token, each with as much preceding context as fits."""
    tokens = list(tokens)
    if not tokens:
        return []
    windows = []
    first = min(max_length, len(tokens))
    windows.append(([prefix_token] + tokens[: first - 1], tokens[:first]))
    predicted = first
    while predicted < len(tokens):
        length = min(len(tokens) - predicted, max_length)
        end = predicted + length
        windows.append((tokens[end - max_length - 1 : end - 1], tokens[end - length : end]))  # end > max_length here
        predicted += length
    return [(ctx[: len(ctx) - (len(pred) - 1)], pred) for ctx, pred in windows]


@dataclasses.dataclass(frozen=True)
class Piece:
    """One request's forward: `prefix` (its input up to the first scored position), `branch`
    (the rest of its input) and the `targets` predicted at prefix[-1] and each branch token."""

    prefix: tuple[int, ...]
    branch: tuple[int, ...]
    targets: tuple[int, ...]


def piece(context: Sequence[int], continuation: Sequence[int], max_length: int) -> Piece:
    """HFLM's input for a (context, continuation) pair: the last max_length + 1 tokens, minus
    the last; the continuation's tokens are scored."""
    full = (list(context) + list(continuation))[-(max_length + 1) :]
    inp, c = full[:-1], len(continuation)
    if c > max_length:
        raise UserError(f"a continuation of {c} tokens is longer than max_length={max_length}; raise max_length or shorten it")
    p = len(inp) - c + 1
    return Piece(tuple(inp[:p]), tuple(inp[p:]), tuple(full[-c:]))


@dataclasses.dataclass
class Rows:
    """A packed batch: tokens, positions, unit ids (0 = padding) and branch ids (0 = the
    shared prefix) (rows, length); `slots` (n, 3): row, position and target of each scored
    token; `owners` (n,): the piece each slot belongs to."""

    tokens: np.ndarray
    positions: np.ndarray
    units: np.ndarray
    branches: np.ndarray
    slots: np.ndarray
    owners: np.ndarray


def _units(pieces: Sequence[Piece], capacity: int) -> list[tuple[tuple[int, ...], list[int]]]:
    """(prefix, indices of the distinct pieces on it) with the prefix once and every branch
    after it, split so that no unit exceeds `capacity` tokens."""
    by_prefix: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(pieces):
        by_prefix.setdefault(p.prefix, []).append(i)
    units = []
    for prefix, members in by_prefix.items():
        current, used = [], len(prefix)
        for i in members:
            n = len(pieces[i].branch)
            if current and used + n > capacity:
                units.append((prefix, current))
                current, used = [], len(prefix)
            current.append(i)
            used += n
        units.append((prefix, current))
    return units


def pack(pieces: Sequence[Piece], max_length: int, min_row: int = MIN_ROW) -> list[tuple[int, list]]:
    """Pack the distinct pieces into rows: (row length, [(prefix, piece indices), ...]) per row.
    Best-fit decreasing: the longest units open rows of their bucketed length and shorter ones
    fill the space left."""
    capacity = bucket_length(max_length, 1)
    units = sorted(_units(pieces, capacity), key=lambda u: -(len(u[0]) + sum(len(pieces[i].branch) for i in u[1])))
    total = sum(len(u[0]) + sum(len(pieces[i].branch) for i in u[1]) for u in units)
    min_row = min(min_row, bucket_length(total))  # a handful of short requests: one short row
    rows: list[tuple[int, list]] = []
    free: list[tuple[int, int]] = []  # (space left, row index), sorted
    for unit in units:
        size = len(unit[0]) + sum(len(pieces[i].branch) for i in unit[1])
        k = bisect.bisect_left(free, (size, -1))
        if k < len(free):
            space, r = free.pop(k)
        else:
            r = len(rows)
            rows.append((bucket_length(size, min_row), []))
            space = rows[r][0]
        rows[r][1].append(unit)
        if space - size > 0:
            bisect.insort(free, (space - size, r))
    return rows


def row_arrays(rows: Sequence[tuple[int, list]], pieces: Sequence[Piece], batch: int, pad_id: int) -> Rows:
    """The arrays of `rows` (all of one length) padded with empty rows to `batch`."""
    length = rows[0][0]
    tokens = np.full((batch, length), pad_id, np.int32)
    positions = np.zeros((batch, length), np.int32)
    units = np.zeros((batch, length), np.int32)
    branches = np.zeros((batch, length), np.int32)
    slots, owners = [], []
    for r, (_, row_units) in enumerate(rows):
        start = 0
        for u, (prefix, members) in enumerate(row_units, start=1):
            p = len(prefix)
            tokens[r, start : start + p] = prefix
            positions[r, start : start + p] = np.arange(p)
            units[r, start : start + p] = u
            at = start + p
            for b, i in enumerate(members, start=1):
                branch, targets = pieces[i].branch, pieces[i].targets
                n = len(branch)
                tokens[r, at : at + n] = branch
                positions[r, at : at + n] = np.arange(p, p + n)
                units[r, at : at + n] = u
                branches[r, at : at + n] = b
                where = [start + p - 1] + list(range(at, at + n))
                slots.extend((r, w, t) for w, t in zip(where, targets))
                owners.extend([i] * len(targets))
                at += n
            start = at
    return Rows(tokens, positions, units, branches, np.asarray(slots, np.int32).reshape(-1, 3), np.asarray(owners, np.int64))
