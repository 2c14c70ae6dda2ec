"""Robustness perturbations of a task's input text (`llm eval --perturb KIND`).

Each is a pure function of (text, kind, seed): the random stream is seeded from a blake2b
digest of the text, kind and seed (not Python's salted hash()), so every run, machine and
process perturbs an item the same way.
  typo:        about 1 in 20 words of 3+ letters gets a typo (swap, drop, double or replace a letter; at least one)
  case:        about 1 in 4 words has its case flipped: upper <-> lower (at least one)
  whitespace:  about 1 in 4 spaces between words is doubled and a space may go before punctuation (at least one change)
  distractor:  an irrelevant sentence (one of DISTRACTORS) is put before the text
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from llm.errors import UserError

PERTURBATIONS = ("typo", "case", "whitespace", "distractor")
DISTRACTORS = (
    "The weather was mild that day.",
    "Note: this sentence is unrelated to the question.",
    "Some people prefer tea to coffee.",
    "The library closes at six on Sundays.",
    "Bananas are a good source of potassium.",
    "A quick brown fox jumps over the lazy dog.",
)
TYPO_RATE = 0.05
CASE_RATE = 0.25
SPACE_RATE = 0.25
_WORD = re.compile(r"[^\W\d_]{3,}")  # letters only, 3 or more
_ANY_WORD = re.compile(r"[^\W\d_]+")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def rng_for(text: str, kind: str, seed: int) -> np.random.Generator:
    """A generator determined by (text, kind, seed) alone."""
    digest = hashlib.blake2b(f"{kind}\0{seed}\0{text}".encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "big"))


def perturb_text(text: str, kind: str, seed: int = 0) -> str:
    """`text` perturbed by `kind` (one of PERTURBATIONS); deterministic in (text, kind, seed).
    Text with nothing to perturb (no letters, no spaces) comes back unchanged."""
    if kind not in PERTURBATIONS:
        raise UserError(f"unknown perturbation {kind!r}; choose one of {', '.join(PERTURBATIONS)}")
    rng = rng_for(text, kind, seed)
    return {"typo": _typo, "case": _case, "whitespace": _whitespace, "distractor": _distractor}[kind](text, rng)


def _chosen(count: int, rate: float, rng: np.random.Generator) -> set[int]:
    """Indices picked with probability `rate` each, at least one when count > 0."""
    if count == 0:
        return set()
    picked = set(np.flatnonzero(rng.random(count) < rate).tolist())
    return picked or {int(rng.integers(count))}


def _typo(text: str, rng: np.random.Generator) -> str:
    words = list(_WORD.finditer(text))
    picked = _chosen(len(words), TYPO_RATE, rng)
    out, last = [], 0
    for i, m in enumerate(words):
        if i not in picked:
            continue
        out.append(text[last : m.start()])
        out.append(_typo_word(m.group(), rng))
        last = m.end()
    out.append(text[last:])
    return "".join(out)


def _typo_word(word: str, rng: np.random.Generator) -> str:
    for _ in range(8):
        op = int(rng.integers(4))
        i = int(rng.integers(len(word) - 1))
        if op == 0:  # swap two neighbours
            new = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        elif op == 1:  # drop one
            new = word[:i] + word[i + 1 :]
        elif op == 2:  # double one
            new = word[: i + 1] + word[i:]
        else:  # replace one by another letter of the same case
            letter = _LETTERS[int(rng.integers(26))]
            new = word[:i] + (letter.upper() if word[i].isupper() else letter) + word[i + 1 :]
        if new != word:
            return new
    return word[:-1]  # drop the last letter (always a change)


def _case(text: str, rng: np.random.Generator) -> str:
    words = [m for m in _ANY_WORD.finditer(text) if m.group().swapcase() != m.group()]
    picked = _chosen(len(words), CASE_RATE, rng)
    out, last = [], 0
    for i, m in enumerate(words):
        if i not in picked:
            continue
        w = m.group()
        out.append(text[last : m.start()])
        out.append(w.lower() if w.isupper() else w.upper())
        last = m.end()
    out.append(text[last:])
    return "".join(out)


def _whitespace(text: str, rng: np.random.Generator) -> str:
    gaps = [m.start() for m in re.finditer(r"(?<=\S) (?=\S)", text)]
    puncts = [m.start() for m in re.finditer(r"(?<=\w)[,.;:!?]", text)]
    doubled = _chosen(len(gaps), SPACE_RATE, rng) if gaps else set()
    spaced = {i for i in range(len(puncts)) if rng.random() < SPACE_RATE} if gaps else _chosen(len(puncts), 1.0, rng)
    inserts = sorted([gaps[i] for i in doubled] + [puncts[i] for i in spaced])
    out, last = [], 0
    for pos in inserts:
        out.append(text[last:pos])
        out.append(" ")
        last = pos
    out.append(text[last:])
    return "".join(out)


def _distractor(text: str, rng: np.random.Generator) -> str:
    return DISTRACTORS[int(rng.integers(len(DISTRACTORS)))] + " " + text
