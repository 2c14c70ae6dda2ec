"""Evaluation results in lm-evaluation-harness's own file layout, so tools written for lm-eval
(leaderboards, its result readers, our `llm compare`) read ours unchanged.

results.json is what lm-eval 0.4.13 writes (`simple_evaluate` + `EvaluationTracker
.save_results_aggregated`): `results` (per task: name, alias, sample_len, "acc,none",
"acc_stderr,none", ...), `group_subtasks`, `configs`, `versions`, `n-shot`, `higher_is_better`,
`n-samples` ({"original", "effective"}), `config` (model, model_args, batch_size, limit, seeds...),
`date`, `task_hashes`, the model identity fields, `total_evaluation_time_seconds`. Fields that
describe lm-eval's PyTorch environment (pretty_env_info, transformers_version, lm_eval_version)
are replaced by `llm_version`. A robustness run adds a top-level `robustness` section (lm-eval
readers ignore unknown keys): per perturbed task, the clean scores and the drop.

Samples go to `samples_<task>.jsonl` (a stable name, rewritten by each run, unlike lm-eval's
`samples_<task>_<date>.jsonl`), one line per logged sample in the layout lm-eval's evaluator
logs them (`simple_evaluate(..., log_samples=True)["samples"][task]`: doc_id, doc, target,
arguments, resps, filtered_resps, filter, metrics, doc_hash, prompt_hash, target_hash, then the
per-item metric values), JSON-safe: tuples become lists, numpy values Python numbers. lm-eval's
own samples file stringifies arguments/resps for Arrow; we keep the numbers (log-likelihoods,
is_greedy) so the files compare item by item.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from llm.errors import UserError

RESULTS_FILE = "results.json"
HIGHER_IS_BETTER_SYMBOLS = {True: "↑", False: "↓"}
# lm-eval's simple_evaluate defaults; our scoring reproduces lm-eval run with them.
LM_EVAL_SEEDS = {"random_seed": 0, "numpy_seed": 1234, "torch_seed": 1234, "fewshot_seed": 1234}
BOOTSTRAP_ITERS = 100000


@dataclass
class TaskResult:
    """One task scored on one model (a perturbed re-run is its own TaskResult, named task@kind)."""

    name: str
    scores: Any  # llm.eval.tasks.TaskScores: metrics, higher_is_better, samples
    config: dict
    version: Any
    n_shot: int
    n_original: int
    n_effective: int
    seconds: float
    perturbation: str | None = None
    clean_metrics: dict | None = None  # robustness: the clean run's metrics, for the drop


def plain(value: Any) -> Any:
    """numpy scalars/arrays and tuples -> Python values JSON can hold (recursively)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist") and type(value).__module__.startswith(("numpy", "jax")):
        return plain(value.tolist())
    return value


def _json_default(o: Any) -> Any:
    """lm-eval's handle_non_serializable: numpy scalars to Python, sets to lists, else str."""
    o = plain(o)
    if isinstance(o, (bool, int, float, str, list, dict)) or o is None:
        return o
    if isinstance(o, set):
        return sorted(o, key=str)
    return str(o)


def _dumps(obj: Any, **kw) -> str:
    return json.dumps(obj, default=_json_default, ensure_ascii=False, **kw)


def hash_string(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _sample_hashes(sample: dict) -> dict:
    """doc_hash / prompt_hash / target_hash as lm-eval computes them (prompt: first request's first arg)."""
    args = sample.get("arguments") or [[""]]
    first = args["gen_args_0"]["arg_0"] if isinstance(args, dict) else args[0][0]
    return {
        "doc_hash": hash_string(_dumps(sample.get("doc"), indent=2)),
        "prompt_hash": hash_string(str(first)),
        "target_hash": hash_string(str(sample.get("target"))),
    }


def _ensure_hashes(samples: list[dict]) -> None:
    for s in samples:
        if not all(k in s for k in ("doc_hash", "prompt_hash", "target_hash")):
            s.update(_sample_hashes(s))


def task_hash(samples: list[dict]) -> str:
    """lm-eval's task_hashes entry: sha256 of every sample's doc+prompt+target hashes, in order."""
    _ensure_hashes(samples)
    return hash_string("".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"] for s in samples))


def _alias(r: TaskResult) -> str:
    alias = r.config.get("task_alias")
    if not alias:
        return r.name
    return f"{alias}@{r.perturbation}" if r.perturbation else str(alias)


def _robustness(task_results: Sequence[TaskResult], results: dict) -> dict:
    out = {}
    for r in task_results:
        if not r.perturbation:
            continue
        base = r.name[: -len(f"@{r.perturbation}")] if r.name.endswith(f"@{r.perturbation}") else r.name
        clean = r.clean_metrics if r.clean_metrics is not None else results.get(base, {})
        hib = plain(r.scores.higher_is_better)
        rows = {}
        for key, value in plain(r.scores.metrics).items():
            metric = key.partition(",")[0]
            if metric.endswith("_stderr") or not _is_number(value) or not _is_number(clean.get(key)):
                continue
            rows[key] = {"clean": float(clean[key]), "perturbed": float(value), "drop": drop(float(clean[key]), float(value), hib.get(metric))}
        out[r.name] = {"task": base, "perturbation": r.perturbation, "metrics": rows}
    return out


def drop(clean: float, perturbed: float, higher_is_better: bool | None) -> float:
    """How much worse the perturbed score is: clean - perturbed for a higher-is-better metric,
    perturbed - clean for a lower-is-better one (perplexity); positive means worse."""
    return perturbed - clean if higher_is_better is False else clean - perturbed


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def results_document(task_results: Sequence[TaskResult], *, model_source: str, model_args: dict, extra: dict | None = None) -> dict:
    """The results.json dict for the tasks finished so far, in lm-eval 0.4.13's layout.

    model_source is the backend name lm-eval writes as config.model / model_source ("llm", as
    lm-eval writes "hf"); model_args (a dict; lm-eval also accepts one) names the weights:
    its "source" (or "pretrained") becomes model_name, its batch_size / limit / fewshot_seed /
    max_length fill the matching config fields. `extra` adds or replaces top-level keys; its
    "config" dict is merged into config."""
    extra = dict(extra or {})
    results: dict[str, dict] = {}
    for r in task_results:
        results[r.name] = {"name": r.name, "alias": _alias(r), "sample_len": r.n_effective, **plain(r.scores.metrics)}
    model_name = model_args.get("source", model_args.get("pretrained"))
    config = {
        "model": model_source,
        "model_args": plain(model_args),
        "batch_size": model_args.get("batch_size"),
        "batch_sizes": [],
        "device": None,
        "use_cache": None,
        "limit": model_args.get("limit"),
        "bootstrap_iters": BOOTSTRAP_ITERS,
        "gen_kwargs": None,
        **LM_EVAL_SEEDS,
    }
    if model_args.get("fewshot_seed") is not None:
        config["fewshot_seed"] = model_args["fewshot_seed"]
    config.update(plain(extra.pop("config", {}) or {}))
    seconds = sum(r.seconds for r in task_results)
    doc: dict[str, Any] = {
        "results": results,
        "group_subtasks": {},
        "configs": dict(sorted((r.name, plain(r.config)) for r in task_results)),
        "versions": dict(sorted((r.name, plain(r.version)) for r in task_results)),
        "n-shot": dict(sorted((r.name, int(r.n_shot)) for r in task_results)),
        "higher_is_better": dict(sorted((r.name, plain(r.scores.higher_is_better)) for r in task_results)),
        "n-samples": {r.name: {"original": int(r.n_original), "effective": int(r.n_effective)} for r in task_results},
        "config": config,
        "git_hash": None,
        "date": time.time() - seconds,
        "llm_version": _llm_version(),
        "eot_token_id": None,
        "max_length": model_args.get("max_length"),
        "task_hashes": {r.name: task_hash(r.scores.samples) for r in task_results if r.scores.samples},
        "model_source": model_source,
        "model_name": None if model_name is None else str(model_name),
        "model_name_sanitized": None if model_name is None else re.sub(r"[\"<>:/|\\?*\[\]]+", "__", str(model_name)),
        "system_instruction": None,
        "system_instruction_sha": None,
        "fewshot_as_multiturn": None,
        "chat_template": None,
        "chat_template_sha": None,
        "total_evaluation_time_seconds": str(seconds),
    }
    robust = _robustness(task_results, results)
    if robust:
        doc["robustness"] = robust
    doc.update(plain(extra))
    return doc


def _llm_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("llm")
    except Exception:  # not installed as a distribution (a source checkout on PYTHONPATH)
        return None


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_results(doc: dict, path: Path) -> None:
    """results.json, written to a temporary file then renamed over the old one: a crash or a
    failing later task never leaves a half-written file, and finished tasks stay on disk."""
    _atomic_write(Path(path), _dumps(doc, indent=2) + "\n")


def sample_record(sample: dict) -> dict:
    """One sample as a JSON line: lm-eval's logged-sample layout (what simple_evaluate returns
    under "samples": arguments as lists, resps as numbers), tuples and numpy values made plain,
    doc_hash / prompt_hash / target_hash added after "metrics" where missing (a copy; the input
    is not changed)."""
    hashes = {k: v for k, v in _sample_hashes(sample).items() if k not in sample}
    out: dict = {}
    for key, value in sample.items():
        out[key] = plain(value)
        if key == "metrics":
            out.update(hashes)
    out.update({k: v for k, v in hashes.items() if k not in out})
    return out


def samples_path(task_name: str, directory: Path) -> Path:
    return Path(directory) / f"samples_{re.sub(r'[^A-Za-z0-9_.@+=-]', '_', task_name)}.jsonl"


def write_samples(task_result: TaskResult, directory: Path) -> Path:
    """samples_<task>.jsonl (atomic), one line per logged sample in lm-eval's layout."""
    path = samples_path(task_result.name, directory)
    lines = [_dumps(sample_record(s)) + "\n" for s in task_result.scores.samples]
    _atomic_write(path, "".join(lines))
    return path


def find_results(path: str | Path) -> Path | None:
    """The results.json a path means: the file itself, <dir>/results.json or <dir>/eval/results.json."""
    p = Path(path)
    if p.is_file():
        return p
    for candidate in (p / RESULTS_FILE, p / "eval" / RESULTS_FILE):
        if candidate.is_file():
            return candidate
    return None


def read_results(path: str | Path) -> dict:
    """A results.json in lm-eval's layout (ours or lm-eval's own)."""
    found = find_results(path)
    if found is None:
        raise UserError(f"{str(path)!r} has no {RESULTS_FILE} (nor eval/{RESULTS_FILE}); run `llm eval` into it first")
    try:
        doc = json.loads(found.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{str(found)!r} is not a readable results JSON ({err}); pass an `llm eval` or lm-eval results.json") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), dict):
        raise UserError(f"{str(found)!r} has no 'results' section; pass an `llm eval` or lm-eval results.json")
    return doc


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _version(value: Any) -> Any:
    return int(value) if isinstance(value, float) and math.isfinite(value) and value.is_integer() else value


def table_rows(doc: dict, column: str = "results") -> list[list[Any]]:
    """make_table's rows: tasks sorted by name, metrics sorted, stderr beside its metric."""
    rows = []
    n_shot = doc.get("n-shot", {})
    for name in sorted(doc[column]):
        entry = dict(doc[column][name])
        shown = entry.pop("alias", name)
        for key in ("name", "sample_len", "sample_count"):
            entry.pop(key, None)
        version = _version(doc.get("versions", {}).get(name, "    N/A"))
        n = n_shot.get(name, " ")
        hib = doc.get("higher_is_better", {}).get(name, {})
        for key, value in sorted(entry.items()):
            metric, _, filt = key.partition(",")
            if metric.endswith("_stderr"):
                continue
            stderr_key = f"{metric}_stderr,{filt}"
            row = [shown, version, filt, n, metric, HIGHER_IS_BETTER_SYMBOLS.get(hib.get(metric), ""), _cell(value)]
            if stderr_key in entry:
                se = entry[stderr_key]
                row += ["±", "   N/A" if se == "N/A" else _cell(se)]
            else:
                row += ["", ""]
            rows.append(row)
            shown, version = "", ""
    return rows


def _numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right_columns: Sequence[int] = ()) -> str:
    """pytablewriter's markdown look: headers centred, numbers right-aligned (the separator marks
    a column of numbers only); `right_columns` are right-aligned whatever they hold."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([3, len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    right = [i in right_columns or (bool([r[i] for r in cells if r[i].strip()]) and all(_numeric(r[i]) for r in cells if r[i].strip()))
             for i in range(len(headers))]

    def centred(text: str, width: int) -> str:
        pad = width - len(text)
        return " " * (pad // 2) + text + " " * (pad - pad // 2)

    lines = ["|" + "|".join(centred(h, w) for h, w in zip(headers, widths)) + "|"]
    lines.append("|" + "|".join("-" * (w - 1) + ":" if r else "-" * w for w, r in zip(widths, right)) + "|")
    for row in cells:
        lines.append("|" + "|".join(c.rjust(w) if _numeric(c) or i in right_columns else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) + "|")
    return "\n".join(lines) + "\n"


def console_table(doc: dict) -> str:
    """The results as lm-eval's make_table prints them: |Tasks|Version|Filter|n-shot|Metric| |Value| |Stderr|.
    Values keep lm-eval's 4 decimals (pytablewriter would re-round a column of numbers to its
    shortest common precision; we do not)."""
    headers = ["Tasks", "Version", "Filter", "n-shot", "Metric", "", "Value", "", "Stderr"]
    return markdown_table(headers, table_rows(doc))
