"""Offline, sandboxed drop-ins for lm-eval's HumanEval hooks (lm_eval/tasks/humaneval/utils.py).

lm-eval's own `utils.pass_at_k` calls Hugging Face `evaluate.load("code_eval")`, which downloads
a metric script (so it fails offline) and runs the generated code in the evaluating process with
no isolation. These functions have the same signatures and results, but each candidate program
(prediction + "\\n" + test code, as code_eval builds it) runs in llm.sandbox: wall-clock timeout,
memory limit, no network, a temporary work dir, stdlib only. A crash, a timeout, a memory error or
an early `sys.exit` is a failure (as in code_eval).

To run lm-eval's humaneval.yaml / humaneval_64.yaml offline, copy the YAML next to a `utils.py`
holding only

    from llm.eval.code_eval import build_predictions, pass_at_k  # noqa: F401

and point `dataset_path`/`dataset_kwargs` at local data (e.g. `dataset_path: json`,
`dataset_kwargs: {data_files: {test: /abs/humaneval.jsonl}}` with the fields prompt, test,
entry_point). The same directory then runs under `llm eval --tasks humaneval.yaml` and under
lm-eval itself (`lm_eval --include_path DIR --tasks humaneval --confirm_run_unsafe_code`, with
`llm` importable there). Sandbox limits can be set per metric in the YAML, next to `k`:
`timeout_s: 10`, `memory_mb: 1024`, `workers: 8`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from llm.errors import UserError
from llm.eval import passk
from llm.sandbox import SandboxLimits

log = logging.getLogger("llm")

DEFAULT_TIMEOUT_S = 3.0  # Hugging Face code_eval's default
DEFAULT_MEMORY_MB = 512
DEFAULT_WORKERS = 4  # code_eval's num_workers
_warned: set[int] = set()  # k values already logged as left out (lm-eval calls once per doc)


def build_predictions(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """Filter (lm-eval's humaneval `create_test`): each completion -> the doc's prompt + completion,
    the whole function the tests then call."""
    return [[doc["prompt"] + r for r in resp] for resp, doc in zip(resps, docs)]


def _ks(k: Sequence[int] | int) -> list[int]:
    ks = [k] if isinstance(k, (int, np.integer)) and not isinstance(k, bool) else k
    if not isinstance(ks, (list, tuple)) or not ks:
        raise UserError(f"pass_at_k k={k!r}: give an int or a non-empty list of ints, e.g. k: [1, 10]")
    for v in ks:
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise UserError(f"pass_at_k k={k!r}: every k must be an int >= 1")
    return [int(v) for v in ks]


def pass_at_k(
    references: list[str],
    predictions: list[list[str]],
    k: Sequence[int] | int = (1,),
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    workers: int = DEFAULT_WORKERS,
) -> dict[str, float]:
    """{"pass@1": .., "pass@10": ..}: the unbiased pass@k of each problem (predictions[i] are its
    candidates, references[i] its test code), averaged over the problems, as code_eval computes
    it. Problems without candidates are left out and a k larger than some problem's number of
    candidates gets no key (code_eval does both; the latter is logged). A bare string in
    `predictions` is one candidate (what a take_first filter leaves)."""
    ks = _ks(k)
    if not isinstance(references, (list, tuple)) or not isinstance(predictions, (list, tuple)):
        raise UserError("pass_at_k: references and predictions must be lists (one test / one list of candidates per problem)")
    if len(references) != len(predictions):
        raise UserError(f"pass_at_k: {len(predictions)} predictions for {len(references)} references; give one list of candidates per problem")
    problems = []
    for ref, cands in zip(references, predictions):
        cands = [cands] if isinstance(cands, str) else list(cands)
        if not isinstance(ref, str) or not all(isinstance(c, str) for c in cands):
            raise UserError("pass_at_k: each reference must be test code (str) and each candidate a program (str)")
        if cands:
            problems.append((ref, cands))
    if not problems:
        raise UserError("pass_at_k: no candidate programs to run; check the task's filter (build_predictions) and repeats")
    limits = SandboxLimits(timeout_s=timeout_s, memory_mb=memory_mb)
    programs = [passk.program_with_tests(c, ref) for ref, cands in problems for c in cands]
    ok = iter(passk.run_programs(programs, limits, workers))
    counts = [(len(cands), sum(next(ok) for _ in cands)) for _, cands in problems]
    out: dict[str, float] = {}
    for kk in ks:
        fewest = min(n for n, _ in counts)
        if fewest < kk:
            if kk not in _warned:
                _warned.add(kk)
                log.warning("pass@%d left out: a problem has only %d candidates (raise `repeats` to >= %d)", kk, fewest, kk)
            continue
        out[f"pass@{kk}"] = float(np.mean([passk.pass_at_k(n, c, kk) for n, c in counts]))
    return out
