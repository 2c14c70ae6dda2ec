"""The built-in docstring-to-body task: given a standard library function's signature and
docstring, write its body (scored by llm.rl.tasks.docstring_reward).

Rows are the top-level documented functions of the built-in corpus (llm.data.builtin: this
interpreter's standard library sources, the same prompt text as its SFT split). Functions whose
docstring has doctest examples that their own body passes in the sandbox come first (the only
rows that can score 1.0); the rest of rl.task_size are drawn with data.seed from the others.
rl.held_out rows are held out, the same share of each kind, doctest rows first (so a held-out
eval of the first rl.eval_prompts rows sees them all). A pure function of the interpreter, the
seed and the sizes; rl.task_size above the functions available uses them all, with a warning.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

from llm.data.builtin import PROMPT, Function, _functions, module_name
from llm.data.sources import stdlib_files, stdlib_root
from llm.errors import UserError
from llm.rl.rewards.spec import RewardSpec
from llm.rl.tasks.base import PromptRow, RLTask, check_sizes
from llm.rl.tasks.docstring_reward import DocstringReward, DocstringSuccess, doctest_score, harness

NAME = "builtin:docstring"
MAX_CHARS = 1200  # header + body, as the built-in corpus
SKIP_MODULES = ("antigravity", "this")  # importing them has side effects (a browser, a poem)
VERIFY_TIMEOUT_S = 20.0  # generous: a stdlib doctest that passes takes well under a second

log = logging.getLogger("llm")


@functools.lru_cache(maxsize=None)
def stdlib_functions(max_chars: int = MAX_CHARS) -> tuple[Function, ...]:
    """Top-level functions with a docstring and a body, in file order."""
    root = stdlib_root()
    found = []
    for path in stdlib_files():
        module = module_name(path, root)
        if module.split(".")[0] in SKIP_MODULES:
            continue
        try:
            source = Path(path).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        found.extend(f for f in _functions(source, module, max_chars) if "." not in f.qualname)
    if not found:
        raise UserError(f"no documented functions under {root}; rl.task='docstring' needs the standard library sources")
    return tuple(found)


@functools.lru_cache(maxsize=None)
def passing_doctests(functions: tuple[Function, ...], memory_mb: int, workers: int) -> frozenset[str]:
    """module.name of each function whose docstring examples pass with its own body in the sandbox."""
    from llm.sandbox import SandboxLimits, SandboxPool

    nonce = "verify"
    candidates = [f for f in functions if ">>>" in f.header]
    with SandboxPool(workers, SandboxLimits(timeout_s=VERIFY_TIMEOUT_S, memory_mb=memory_mb)) as pool:
        futures = [pool.submit(harness(f.module, f.qualname, f.header, f.body), stdin=nonce + "\n") for f in candidates]
        return frozenset(f"{f.module}.{f.qualname}" for f, fut in zip(candidates, futures) if doctest_score(fut.result(), nonce) == 1.0)


def _row(fn: Function, doctest: bool) -> PromptRow:
    columns = {"header": fn.header, "function": fn.qualname, "module": fn.module, "doctest": doctest, "body": fn.body}
    return PromptRow(PROMPT.format(module=fn.module, header=fn.header), columns)


def docstring_task(size: int, held_out: int, seed: int, *, timeout_s: float = 2.0, memory_mb: int = 256, workers: int = 2) -> RLTask:
    check_sizes("docstring", size, held_out)
    functions = stdlib_functions()
    passing = passing_doctests(functions, memory_mb, max(1, workers))
    rng = np.random.default_rng([seed, 0xD0C])
    shuffled = [functions[i] for i in rng.permutation(len(functions))]
    tested = [f for f in shuffled if f"{f.module}.{f.qualname}" in passing]
    others = [f for f in shuffled if f"{f.module}.{f.qualname}" not in passing]
    if size > len(functions):
        log.warning("rl.task_size=%d: the docstring task has %d functions on this interpreter; using them all", size, len(functions))
        size = len(functions)
        check_sizes("docstring", size, held_out)
    tested = tested[:size]
    others = others[: size - len(tested)]
    held_tested = min(len(tested), round(held_out * len(tested) / size))
    held_others = held_out - held_tested
    if held_others > len(others):
        held_tested, held_others = held_out - len(others), len(others)
    train = [_row(f, True) for f in tested[held_tested:]] + [_row(f, False) for f in others[held_others:]]
    held = [_row(f, True) for f in tested[:held_tested]] + [_row(f, False) for f in others[:held_others]]
    train = [train[i] for i in rng.permutation(len(train))]
    reward = DocstringReward(timeout_s, memory_mb, workers)
    return RLTask("docstring", train, held, [RewardSpec(NAME, 1.0, reward)], DocstringSuccess(reward), response_column="body")
