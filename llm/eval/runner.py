"""Run lm-eval tasks on one model: requests from the tasks, answers from the model, scores back
to the tasks, and results written after every task so a later failure never loses earlier ones."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Sequence

from llm.errors import UserError

log = logging.getLogger("llm")

BUILTIN = "builtin"


def resolve_task_paths(spec: str | Sequence[str], builtin_dir: Path, *, write_builtin: bool = True) -> list[Path]:
    """`builtin`, YAML files and directories of YAML files (comma-separated or a list) -> YAML paths.
    The built-in suite is written under `builtin_dir` (data + YAMLs); with write_builtin=False
    the files already there are used (other processes of a multi-host run read process 0's)."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s and s.strip()]
    if not items:
        raise UserError("no tasks given; pass --tasks builtin or paths to lm-eval task YAML files")
    paths: list[Path] = []
    for item in items:
        if item == BUILTIN:
            from llm.eval.builtin import TASKS, materialize_builtin

            paths.extend(materialize_builtin(builtin_dir) if write_builtin else [Path(builtin_dir) / f"{t}.yaml" for t in TASKS])
            continue
        path = Path(item)
        if path.is_dir():
            found = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
            if not found:
                raise UserError(f"task directory {item!r} holds no .yaml files; pass lm-eval task YAML files or 'builtin'")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise UserError(
                f"task {item!r} is not a YAML file or a directory (tasks are read offline from lm-eval task files); "
                "pass a path to a task YAML, a directory of them, or 'builtin'"
            )
    return paths


def _doc_transform(kind: str | None, seed: int, doc_id: int) -> Callable[[str], str] | None:
    if kind is None:
        return None
    from llm.eval.perturb import perturb_text

    return lambda text: perturb_text(text, kind, seed * 1_000_003 + doc_id)


def answer(model, requests: Sequence) -> list:
    """The model's answer to each request, in order: one batched call per request kind.
    Greedy generations with `repeats` > 1 are produced once and repeated (they are identical)."""
    responses: list = [None] * len(requests)
    by_kind: dict[str, list[int]] = {}
    for i, r in enumerate(requests):
        by_kind.setdefault(r.kind, []).append(i)
    if "loglikelihood" in by_kind:
        idx = by_kind.pop("loglikelihood")
        for i, out in zip(idx, model.loglikelihood([tuple(requests[i].args) for i in idx])):
            responses[i] = out
    if "loglikelihood_rolling" in by_kind:
        idx = by_kind.pop("loglikelihood_rolling")
        for i, out in zip(idx, model.loglikelihood_rolling([requests[i].args[0] for i in idx])):
            responses[i] = out
    if "generate_until" in by_kind:
        from llm.eval.model import samples

        idx = by_kind.pop("generate_until")
        calls, owners = [], []
        for i in idx:
            context, kwargs = requests[i].args
            copies = max(1, requests[i].repeats) if samples(kwargs) else 1
            calls.extend([(context, dict(kwargs))] * copies)
            owners.extend([i] * copies)
        texts = model.generate_until(calls)
        grouped: dict[int, list[str]] = {}
        for i, text in zip(owners, texts):
            grouped.setdefault(i, []).append(text)
        for i in idx:
            got = grouped[i]
            responses[i] = got if len(got) == requests[i].repeats else got * requests[i].repeats
    if by_kind:
        raise UserError(f"request type {sorted(by_kind)[0]!r} is not one llm eval answers; use loglikelihood, loglikelihood_rolling, multiple_choice or generate_until")
    return responses


def evaluate_task(model, task, *, limit: float | None = None, perturb: str | None = None, seed: int = 0):
    """Score one task; with `perturb`, on inputs perturbed deterministically (seeded per doc)."""
    from llm.eval.results import TaskResult

    start = time.perf_counter()
    docs = task.docs(limit)
    if not docs:
        raise UserError(f"task {task.name!r} has no documents to evaluate (empty split, or --limit 0); check its data files and splits")
    n_original = len(task.docs(None)) if limit is not None else len(docs)
    requests = []
    for doc_id, doc in docs:
        requests.extend(task.requests(doc_id, doc, transform=_doc_transform(perturb, seed, doc_id)))
    responses = answer(model, requests)
    scores = task.score(docs, requests, responses)
    return TaskResult(
        name=task.name if perturb is None else f"{task.name}@{perturb}",
        scores=scores,
        config=task.config_dict(),
        version=task.version,
        n_shot=task.num_fewshot,
        n_original=n_original,
        n_effective=len(docs),
        seconds=time.perf_counter() - start,
        perturbation=perturb,
    )


def evaluate_tasks(model, tasks: Sequence, *, limit: float | None = None, perturb: str | None = None, seed: int = 0,
                   on_result: Callable | None = None) -> list:
    """Each task in turn (clean, then perturbed when `perturb` is set); `on_result(result)` after each."""
    results = []
    for task in tasks:
        clean = evaluate_task(model, task, limit=limit)
        results.append(clean)
        if on_result:
            on_result(clean)
        log.info("%s: %s (%.1f s)", task.name, _headline(clean.scores.metrics), clean.seconds)
        if perturb:
            noisy = evaluate_task(model, task, limit=limit, perturb=perturb, seed=seed)
            noisy.clean_metrics = dict(clean.scores.metrics)
            results.append(noisy)
            if on_result:
                on_result(noisy)
            log.info("%s: %s (%.1f s)", noisy.name, _headline(noisy.scores.metrics), noisy.seconds)
    return results


def _headline(metrics: dict) -> str:
    shown = [f"{k}={v:.4g}" for k, v in metrics.items() if "_stderr" not in k and isinstance(v, (int, float))]
    return ", ".join(shown[:4])


def load_tasks(paths: Sequence[Path], *, num_fewshot: int | None = None, fewshot_seed: int = 1234) -> list:
    from llm.eval.tasks import load_task

    tasks = [load_task(p, num_fewshot=num_fewshot, fewshot_seed=fewshot_seed) for p in paths]
    seen: dict[str, Path] = {}
    for task, path in zip(tasks, paths):
        if task.output_type == "generate_until" and not (task.config_dict().get("generation_kwargs") or {}).get("until"):
            log.warning("task %r (%s) gives no stop strings (generation_kwargs.until): its generations stop at the tokenizer's "
                        "end-of-sequence token or max_gen_toks", task.name, path)
        if task.name in seen:
            raise UserError(f"two task files define task {task.name!r} ({seen[task.name]} and {path}); rename one (the `task:` key)")
        seen[task.name] = path
    return tasks


def run_eval(model, tasks: Sequence, out_dir: Path, *, results_path: Path | None = None, model_source: str = "",
             model_args: dict | None = None, limit: float | None = None, perturb: str | None = None, seed: int = 0,
             write_samples: bool = True, extra: dict | None = None) -> dict:
    """Evaluate and write results.json (rewritten after each task), samples JSONL and the report."""
    from llm.eval import results as R
    from llm.eval.report import write_report

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = Path(results_path) if results_path else out_dir / "results.json"
    done: list = []

    def save(result) -> None:
        done.append(result)
        if write_samples:
            R.write_samples(result, out_dir)
        R.write_results(R.results_document(done, model_source=model_source, model_args=model_args or {}, extra=extra), results_path)

    evaluate_tasks(model, tasks, limit=limit, perturb=perturb, seed=seed, on_result=save)
    doc = R.results_document(done, model_source=model_source, model_args=model_args or {}, extra=extra)
    R.write_results(doc, results_path)
    perturbed = {r.name: r for r in done if r.perturbation} or None
    write_report(doc, out_dir, perturbed=perturbed)
    return doc
