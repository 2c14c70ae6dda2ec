"""The built-in evaluation suite (`llm eval --tasks builtin`): four lm-eval task files over the
built-in corpus's held-out modules, decontaminated against its training split.

  builtin_perplexity      loglikelihood_rolling: word_perplexity, byte_perplexity, bits_per_byte
  builtin_next_line       multiple_choice: which line follows (acc, acc_norm)
  builtin_docstring_name  multiple_choice: docstring -> function name (acc, acc_norm)
  builtin_docstring_body  generate_until: docstring -> body, pass@1 on its doctests in llm.sandbox

The YAML files ship in this package (valid lm-eval task files but for their relative data
paths); materialize_builtin writes the data as JSONL and copies of the YAMLs (with absolute
data paths) and utils.py into a directory that llm eval, or lm-eval's
TaskManager(include_path=...), loads. builtin_suite.json there records the sizes and how many
candidates were dropped as contaminated.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from llm.errors import UserError
from llm.eval.builtin import items as it
from llm.eval.passk import DEFAULT_LIMITS, doctest_program, run_programs

TASKS = ("builtin_perplexity", "builtin_next_line", "builtin_docstring_name", "builtin_docstring_body")
SUMMARY = "builtin_suite.json"
PACKAGE_DIR = Path(__file__).parent
_DATA_LINE = re.compile(r"^(\s+)(train|validation|test): (\S+\.jsonl)\s*$", re.M)

log = logging.getLogger("llm")


def shipped_yaml(task: str) -> Path:
    """The package's YAML file of one built-in task."""
    if task not in TASKS:
        raise UserError(f"unknown built-in task {task!r}; choose one of {', '.join(TASKS)}")
    return PACKAGE_DIR / f"{task}.yaml"


def materialize_builtin(
    out_dir: str | Path,
    *,
    corpus: str | Path | None = None,
    eval_fraction: float = 0.1,
    files: Sequence[str] | None = None,
    seed: int = 1234,
    perplexity_docs: int = 64,
    perplexity_chars: int = 2000,
    next_line_items: int = 200,
    name_items: int = 200,
    body_items: int | None = 100,
    fewshot_items: int = 32,
    num_choices: int = 4,
    context_lines: int = 8,
    max_chars: int = 1200,
    workers: int = 2,
) -> list[Path]:
    """Write the built-in suite into `out_dir` and return its four YAML paths (TASKS order).

    corpus: a built-in corpus (`llm data builtin --out DIR`: the directory or its manifest.json);
    None reads this interpreter's stdlib with the same split (eval_fraction of the modules, by
    a hash of the name; `files` restricts it). Item counts are upper bounds (a small held-out
    split may give fewer). builtin_docstring_body keeps only functions whose own body passes
    their doctests in the sandbox (this runs them, `workers` at a time). Deterministic: the
    same corpus and arguments give byte-identical files."""
    for name, value in (("perplexity_docs", perplexity_docs), ("perplexity_chars", perplexity_chars),
                        ("next_line_items", next_line_items), ("name_items", name_items), ("fewshot_items", fewshot_items),
                        ("context_lines", context_lines), ("body_items", 1 if body_items is None else body_items)):
        if not isinstance(value, int) or value < 1:
            raise UserError(f"materialize_builtin {name}={value!r}: give an int >= 1")
    if not isinstance(num_choices, int) or num_choices < 2:
        raise UserError(f"materialize_builtin num_choices={num_choices!r}: give an int >= 2")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    train, held = it.read_corpus(corpus, eval_fraction, files)
    ngrams = it.TrainNgrams(train)
    rngs = {t: np.random.default_rng([seed, i]) for i, t in enumerate(TASKS)}
    data, summary = {}, {}

    def record(task: str, picked: it.Picked, fewshot: list[dict] | None, **extra) -> None:
        data[task] = {"test": picked.items, **({"train": fewshot} if fewshot is not None else {})}
        summary[task] = {"items": len(picked.items), "examined": picked.examined, "contaminated": picked.contaminated,
                         **({"fewshot_items": len(fewshot)} if fewshot is not None else {}), **extra}

    rng = rngs["builtin_perplexity"]
    docs = it.perplexity_candidates(held, perplexity_chars)
    picked = it.pick(docs, perplexity_docs, rng, lambda d: d, lambda d: d["text"], ngrams)
    picked.items.sort(key=lambda d: d["module"])
    record("builtin_perplexity", picked, None)

    rng = rngs["builtin_next_line"]
    make = it.next_line_maker(held, context_lines, num_choices, rng)
    picked = it.pick(it.next_line_candidates(held, context_lines), next_line_items, rng, make, it.next_line_text, ngrams)
    make = it.next_line_maker(train, context_lines, num_choices, rng)
    fewshot = it.pick(it.next_line_candidates(train, context_lines), fewshot_items, rng, make, it.next_line_text, None).items
    record("builtin_next_line", picked, fewshot)

    held_fns, train_fns = it.functions_of(held, max_chars), it.functions_of(train, max_chars)
    rng = rngs["builtin_docstring_name"]
    picked = it.pick(held_fns, name_items, rng, it.name_maker(held_fns, num_choices, 300, rng), it.name_text, ngrams)
    fewshot = it.pick(train_fns, fewshot_items, rng, it.name_maker(train_fns, num_choices, 300, rng), it.name_text, None).items
    record("builtin_docstring_name", picked, fewshot)

    rng = rngs["builtin_docstring_body"]
    picked = it.pick(held_fns, None, rng, it.body_item, it.body_text, ngrams)
    programs = [doctest_program(d["module"], d["function"], d["header"], d["body"]) for d in picked.items]
    passing = run_programs(programs, DEFAULT_LIMITS, workers)
    failing = len(passing) - sum(passing)
    picked.items = [d for d, ok in zip(picked.items, passing) if ok][:body_items]
    fewshot = it.pick(train_fns, fewshot_items, rng, it.body_item, it.body_text, None).items
    record("builtin_docstring_body", picked, fewshot, own_doctests_fail=failing)

    paths = []
    for task in TASKS:
        files_of = {}
        for split, rows in data[task].items():
            files_of[f"{task}.{split}.jsonl"] = out / f"{task}.{split}.jsonl"
            _write_jsonl(files_of[f"{task}.{split}.jsonl"], rows)
        text = shipped_yaml(task).read_text(encoding="utf-8")
        text = _DATA_LINE.sub(lambda m: f"{m.group(1)}{m.group(2)}: {json.dumps(str(files_of[m.group(3)]))}", text)
        (out / f"{task}.yaml").write_text(text, encoding="utf-8")
        paths.append(out / f"{task}.yaml")
    shutil.copyfile(PACKAGE_DIR / "utils.py", out / "utils.py")
    params = {"corpus": None if corpus is None else str(corpus), "eval_fraction": eval_fraction, "seed": seed,
              "perplexity_chars": perplexity_chars, "num_choices": num_choices, "context_lines": context_lines,
              "held_out_modules": len(held), "train_modules": len(train), "ngram": it.NGRAM}
    (out / SUMMARY).write_text(json.dumps({"params": params, "tasks": summary}, indent=2) + "\n", encoding="utf-8")
    for task in TASKS:
        s = summary[task]
        log.info("%s: %d items (%d held-out candidates examined, %d dropped as contaminated by the training split)",
                 task, s["items"], s["examined"], s["contaminated"])
        if not s["items"]:
            raise UserError(f"built-in task {task} has no items from {len(held)} held-out modules; raise eval_fraction or use more files")
    return paths


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
