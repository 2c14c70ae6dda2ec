"""An lm-eval task config, checked: every key is one we implement (else a UserError naming the
key and the file), defaults filled as lm_eval/config/task.py TaskConfig/FewshotConfig fill them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm.errors import UserError
from llm.eval import metrics as M


OUTPUT_TYPES = ("loglikelihood", "loglikelihood_rolling", "multiple_choice", "generate_until")

# TaskConfig's fields in its order (config_dict keeps it), with lm-eval's defaults.
FIELDS: dict[str, Any] = {
    "task": None, "task_alias": None, "tag": None, "custom_dataset": None, "dataset_path": None,
    "dataset_name": None, "dataset_kwargs": None, "training_split": None, "validation_split": None,
    "test_split": None, "fewshot_split": None, "process_docs": None, "doc_to_text": None,
    "doc_to_target": None, "unsafe_code": False, "doc_to_choice": None, "process_results": None,
    "description": "", "target_delimiter": " ", "fewshot_delimiter": "\n\n", "fewshot_config": None,
    "num_fewshot": None, "metric_list": None, "output_type": "generate_until", "generation_kwargs": None,
    "repeats": 1, "filter_list": None, "should_decontaminate": False, "doc_to_decontamination_query": None,
    "gen_prefix": None, "metadata": None,
}
# Read by lm-eval only for its task registry; accepted and dropped as lm-eval's TaskFactory does.
REGISTRY_KEYS = ("group", "group_alias")
# Fields lm-eval knows that we do not implement: a clear error instead of a silent ignore.
UNSUPPORTED = {
    "doc_to_image": "multimodal tasks are not supported",
    "doc_to_audio": "multimodal tasks are not supported",
    "use_prompt": "promptsource prompts are not supported; write doc_to_text/doc_to_target",
    "class": "Python task classes are not supported; write the task as YAML",
    "task_list": "task_list groups are not supported; give each task's YAML",
}
FEWSHOT_KEYS = ("sampler", "split", "process_docs", "samples", "doc_to_text", "doc_to_choice",
                "doc_to_target", "gen_prefix", "fewshot_delimiter", "target_delimiter")
SAMPLERS = ("default", "first_n")
DATASET_KWARGS = ("data_files", "data_dir", "trust_remote_code")


def _bad(path: Path, msg: str) -> UserError:
    return UserError(f"{path}: {msg}")


def check_config(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """Raw YAML mapping -> complete config dict (every FIELDS key present), or a UserError."""
    raw = dict(raw)
    for key in REGISTRY_KEYS:
        raw.pop(key, None)
    for key in raw:
        if key in UNSUPPORTED:
            raise _bad(path, f"key {key!r}: {UNSUPPORTED[key]}")
        if key not in FIELDS:
            raise _bad(path, f"unsupported key {key!r}; the lm-eval task keys llm eval reads are: {', '.join(FIELDS)}")
    cfg = {k: raw.get(k, v) for k, v in FIELDS.items()}
    if isinstance(cfg["task"], list):
        raise _bad(path, "`task:` is a list (a group); give each task's YAML instead")
    if not cfg["task"]:
        raise _bad(path, "no `task:` name; add `task: <name>`")
    out = cfg["output_type"]
    if out not in OUTPUT_TYPES:
        raise _bad(path, f"unsupported output_type {out!r}; use one of {', '.join(OUTPUT_TYPES)}")
    if cfg["custom_dataset"] is None and cfg["dataset_path"] is None:
        raise _bad(path, "no dataset_path; add e.g. `dataset_path: json` with dataset_kwargs: {data_files: {test: file.jsonl}}")
    for key in (cfg["dataset_kwargs"] or {}):
        if key not in DATASET_KWARGS:
            raise _bad(path, f"unsupported dataset_kwargs key {key!r}; llm eval reads local data via {', '.join(DATASET_KWARGS)}")
    if cfg["test_split"] is None and cfg["validation_split"] is None:
        raise _bad(path, "neither test_split nor validation_split is set; name the split to evaluate")
    for key in ("process_docs", "process_results", "custom_dataset"):
        if cfg[key] is not None and not callable(cfg[key]):
            raise _bad(path, f"{key} must be a `!function module.fn`, got {cfg[key]!r}")
    if not isinstance(cfg["repeats"], int) or cfg["repeats"] < 1:
        raise _bad(path, f"repeats {cfg['repeats']!r} must be an integer >= 1")
    if isinstance(cfg["metadata"], dict) or cfg["metadata"] is None:
        cfg["metadata"] = dict(cfg["metadata"] or {})
    else:
        cfg["metadata"] = {"_metadata": cfg["metadata"]}
    cfg["metadata"]["config_source"] = str(path)
    _generation_defaults(cfg)
    cfg["fewshot_config"] = _fewshot_config(cfg, path)
    _check_metrics(cfg, path)
    _check_filters(cfg, path)
    return cfg


def _generation_defaults(cfg: dict) -> None:
    """As TaskConfig.__post_init__, except that a missing `until` stays missing: the engine then
    stops at the tokenizer's end-of-sequence and says so (lm-eval would stop at fewshot_delimiter)."""
    gk = cfg["generation_kwargs"]
    if gk is not None:
        gk = cfg["generation_kwargs"] = dict(gk)
        if "temperature" in gk:
            gk["temperature"] = float(gk["temperature"])
        if isinstance(gk.get("until"), str):
            gk["until"] = [gk["until"]]
    elif cfg["output_type"] == "generate_until":
        cfg["generation_kwargs"] = {"temperature": 0.0, "do_sample": False, "max_gen_toks": 256}


def _fewshot_config(cfg: dict, path: Path) -> dict:
    given = cfg["fewshot_config"] or {}
    if not isinstance(given, dict):
        raise _bad(path, f"fewshot_config must be a mapping, got {type(given).__name__}")
    for key in given:
        if key not in FEWSHOT_KEYS:
            raise _bad(path, f"unsupported fewshot_config key {key!r}; supported: {', '.join(FEWSHOT_KEYS)}")
    fs = {
        "sampler": "default", "split": cfg["fewshot_split"], "process_docs": cfg["process_docs"],
        "fewshot_indices": None, "samples": None, "doc_to_text": cfg["doc_to_text"],
        "doc_to_choice": cfg["doc_to_choice"], "doc_to_target": cfg["doc_to_target"],
        "gen_prefix": cfg["gen_prefix"], "fewshot_delimiter": cfg["fewshot_delimiter"],
        "target_delimiter": cfg["target_delimiter"], **given,
    }
    if fs["sampler"] not in SAMPLERS:
        raise _bad(path, f"fewshot_config sampler {fs['sampler']!r} is not supported; use one of {', '.join(SAMPLERS)}")
    return fs


def _check_metrics(cfg: dict, path: Path) -> None:
    out = cfg["output_type"]
    entries = cfg["metric_list"]
    if entries is None:
        return
    if not isinstance(entries, list):
        raise _bad(path, "metric_list must be a list of {metric: ...} entries")
    for entry in entries:
        if not isinstance(entry, dict) or "metric" not in entry:
            raise _bad(path, f"metric_list entry {entry!r} has no `metric:`; add one")
        name = entry["metric"]
        if entry.get("hf_evaluate"):
            raise _bad(path, f"metric {name!r}: hf_evaluate metrics are not supported (offline); use a !function metric")
        agg = entry.get("aggregation")
        if isinstance(agg, str) and agg not in M.AGGREGATIONS:
            raise _bad(path, f"metric {name!r}: unsupported aggregation {agg!r}; use one of {', '.join(M.AGGREGATIONS)} or !function")
        if callable(name) or cfg["process_results"] is not None:
            if agg is None and (callable(name) or name not in M.METRICS):
                label = getattr(name, "__name__", name)
                raise _bad(path, f"metric {label!r} has no aggregation; add `aggregation: mean` (or another)")
            continue
        if name not in M.METRICS or out not in M.METRICS[name][3]:
            ok = [m for m, spec in M.METRICS.items() if out in spec[3]]
            raise _bad(path, f"metric {name!r} is not supported for output_type {out}; use one of {', '.join(ok)} or a !function metric")


def _check_filters(cfg: dict, path: Path) -> None:
    fl = cfg["filter_list"]
    if fl is None:
        return
    if not isinstance(fl, list):
        raise _bad(path, "filter_list must be a list of {name: ..., filter: [...]} entries")
    for entry in fl:
        if not isinstance(entry, dict) or "name" not in entry or "filter" not in entry:
            raise _bad(path, f"filter_list entry {entry!r} needs `name:` and `filter:`")
        for fn in entry["filter"]:
            if not isinstance(fn, dict) or "function" not in fn:
                raise _bad(path, f"filter {entry['name']!r}: step {fn!r} has no `function:`")
