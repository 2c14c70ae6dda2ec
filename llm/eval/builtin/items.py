"""Items of the built-in suite, from the built-in corpus's module sources (llm.data.builtin).

Evaluated items come from the held-out (validation) modules only and are decontaminated: an
item sharing a word 13-gram with the training split's sources is dropped and counted. Few-shot
examples come from the training split. Every choice is drawn from a numpy generator seeded by
the caller, so the items are a pure function of the corpus and the arguments.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from llm.data.builtin import Function, _functions, manifest_file, manifest_path_for, module_name
from llm.data.curate.hashing import ngram_hashes, words
from llm.data.sources import stdlib_files, stdlib_root
from llm.data.split import is_validation
from llm.errors import UserError
from llm.sandbox.doctest_program import function_docstring

NGRAM = 13
SKIP_MODULES = ("antigravity", "this")  # importing them has side effects (a browser, a poem)
MIN_LINE_CHARS = 8  # a next-line target or distractor has at least this many non-blank chars
MIN_DOC_CHARS = 200  # shorter held-out modules make no perplexity document


@dataclasses.dataclass(frozen=True)
class Module:
    name: str
    text: str


@dataclasses.dataclass
class Picked:
    """Items kept, and how many candidates were examined and dropped as contaminated."""

    items: list[dict]
    examined: int = 0
    contaminated: int = 0


def read_corpus(corpus: str | Path | None, eval_fraction: float, files: Sequence[str] | None) -> tuple[list[Module], list[Module]]:
    """(train, validation) modules, sorted by name: from a built-in corpus manifest (or the
    directory holding one) when given, else straight from the stdlib with build_builtin's split."""
    split: dict[str, list[Module]] = {"train": [], "validation": []}
    if corpus is not None:
        manifest = manifest_path_for(str(corpus))
        if manifest is None:
            raise UserError(f"{str(corpus)!r} holds no corpus manifest.json; build one with `llm data builtin --out DIR`")
        for name in split:
            with open(manifest_file(manifest, "pretrain", name), encoding="utf-8") as f:
                split[name] = [Module(r["module"], r["text"]) for r in map(json.loads, f) if r.get("text", "").strip()]
    else:
        root = stdlib_root()
        for path in stdlib_files() if files is None else files:
            name = module_name(path, root)
            try:
                text = Path(path).read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if text.strip():
                split["validation" if is_validation(name, eval_fraction) else "train"].append(Module(name, text))
    train, held = (sorted(split[s], key=lambda m: m.name) for s in ("train", "validation"))
    if not held:
        raise UserError("the built-in corpus has no held-out (validation) modules; raise eval_fraction or use more files")
    return train, held


class TrainNgrams:
    """Sorted word 13-gram hashes of the training split (llm.data.curate's hashing)."""

    def __init__(self, modules: Sequence[Module], n: int = NGRAM):
        self.n = n
        hashes = [ngram_hashes(words(m.text), n) for m in modules if len(words(m.text)) >= n]
        self.table = np.unique(np.concatenate(hashes)) if hashes else np.zeros(0, np.uint64)

    def contaminated(self, text: str) -> bool:
        tokens = words(text)
        if len(tokens) < self.n or len(self.table) == 0:
            return False
        h = ngram_hashes(tokens, self.n)
        pos = np.minimum(np.searchsorted(self.table, h), len(self.table) - 1)
        return bool(np.any(self.table[pos] == h))


def pick(candidates: list, count: int | None, rng: np.random.Generator, make: Callable[[object], dict | None],
         text_of: Callable[[dict], str], ngrams: TrainNgrams | None) -> Picked:
    """Examine candidates in a seeded order until `count` items are kept (None: all); `make`
    returns None for a candidate that makes no item; contaminated items are dropped and counted."""
    out = Picked([])
    for i in rng.permutation(len(candidates)):
        if count is not None and len(out.items) >= count:
            break
        item = make(candidates[int(i)])
        if item is None:
            continue
        out.examined += 1
        if ngrams is not None and ngrams.contaminated(text_of(item)):
            out.contaminated += 1
            continue
        out.items.append(item)
    return out


# -- builtin_perplexity -------------------------------------------------------------------------


def perplexity_candidates(modules: Sequence[Module], max_chars: int) -> list[dict]:
    """One document per module: its source cut to whole lines within max_chars."""
    docs = []
    for m in modules:
        text = m.text if len(m.text) <= max_chars else m.text[: m.text.rfind("\n", 0, max_chars) + 1]
        if len(text.strip()) >= MIN_DOC_CHARS:
            docs.append({"module": m.name, "text": text})
    return docs


# -- builtin_next_line --------------------------------------------------------------------------


def _content(line: str) -> bool:
    return len(line.strip()) >= MIN_LINE_CHARS


def next_line_candidates(modules: Sequence[Module], context_lines: int) -> list[tuple[int, int]]:
    """(module index, line index) of lines with content after `context_lines` lines holding at least two non-blank ones."""
    out = []
    for mi, m in enumerate(modules):
        lines = m.text.splitlines()
        for i in range(context_lines, len(lines)):
            if _content(lines[i]) and sum(bool(x.strip()) for x in lines[i - context_lines : i]) >= 2:
                out.append((mi, i))
    return out


def next_line_maker(modules: Sequence[Module], context_lines: int, num_choices: int, rng: np.random.Generator):
    """Builds {"module", "line", "context", "choices", "label"}: the true next line and
    num_choices - 1 distinct lines of other modules, re-indented like the true one (so the
    indentation gives nothing away), in a seeded order."""
    lines = [m.text.splitlines() for m in modules]
    pool = [(mi, s) for mi, ls in enumerate(lines) for s in sorted({x.strip() for x in ls if _content(x)})]

    def make(candidate: tuple[int, int]) -> dict | None:
        mi, i = candidate
        true = lines[mi][i]
        indent = true[: len(true) - len(true.lstrip())]
        choices, seen = [true], {true.strip()}
        for _ in range(20 * num_choices):
            if len(choices) == num_choices:
                break
            other_mi, s = pool[int(rng.integers(len(pool)))]
            if other_mi != mi and s not in seen:
                seen.add(s)
                choices.append(indent + s)
        if len(choices) < num_choices:
            return None
        order = rng.permutation(num_choices)
        context = "\n".join(lines[mi][i - context_lines : i]) + "\n"
        return {"module": modules[mi].name, "line": i + 1, "context": context,
                "choices": [choices[j] for j in order], "label": int(np.argmax(order == 0))}

    return make


def next_line_text(item: dict) -> str:
    return item["context"] + item["choices"][item["label"]]


# -- functions: builtin_docstring_name and builtin_docstring_body -------------------------------


def functions_of(modules: Sequence[Module], max_chars: int) -> list[Function]:
    return [f for m in modules if m.name.split(".")[0] not in SKIP_MODULES for f in _functions(m.text, m.name, max_chars)]


def docstring(header: str) -> str:
    doc = function_docstring(header)
    return inspect.cleandoc(doc) if doc else ""


def name_maker(functions: Sequence[Function], num_choices: int, max_doc_chars: int, rng: np.random.Generator):
    """Builds {"module", "function", "context", "choices", "label"}: the docstring's first
    paragraph as `#` comments then "def", choices the true name and names of other functions."""
    names = sorted({f.qualname.rsplit(".", 1)[-1] for f in functions})

    def make(fn: Function) -> dict | None:
        name = fn.qualname.rsplit(".", 1)[-1]
        summary = docstring(fn.header).split("\n\n")[0].strip()[:max_doc_chars]
        if name.startswith("__") or len(words(summary)) < 3:
            return None
        choices, seen = [name], {name}
        for _ in range(20 * num_choices):
            if len(choices) == num_choices:
                break
            other = names[int(rng.integers(len(names)))]
            if other not in seen and not other.startswith("__"):
                seen.add(other)
                choices.append(other)
        if len(choices) < num_choices:
            return None
        order = rng.permutation(num_choices)
        context = "".join(f"# {line}".rstrip() + "\n" for line in summary.splitlines()) + "def"
        return {"module": fn.module, "function": fn.qualname, "context": context,
                "choices": [choices[j] for j in order], "label": int(np.argmax(order == 0))}

    return make


def name_text(item: dict) -> str:
    return item["context"] + " " + item["choices"][item["label"]]


def body_item(fn: Function) -> dict | None:
    """{"module", "function", "header", "body"} for a top-level function with doctest examples."""
    if "." in fn.qualname or ">>>" not in docstring(fn.header):
        return None
    return {"module": fn.module, "function": fn.qualname, "header": fn.header, "body": fn.body}


def body_text(item: dict) -> str:
    return item["header"] + item["body"]
