"""Where a fine-tuning run starts and what it reads: `--init-from PRE` and `--data D` folded
into the config, so the workdir's config.json records them and a re-run resumes.

PRE is a training workdir, a params-only checkpoint (`llm export`) or a Hugging Face model
directory. The model section and the tokenizer come from PRE: they belong to its weights.
D is a JSONL file (or glob) or the manifest.json of `llm data builtin` / `llm data curate`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable

import ml_collections

from llm.checkpoint.manager import LAYOUT_KEYS, model_mismatch
from llm.checkpoint.params_io import config_from_json
from llm.data.builtin import manifest_path_for
from llm.errors import UserError
from llm.train.init_sources import STORED_LAYOUT_KEYS, stored_layout_mismatch

# Layout keys the fine-tuning config may choose freely; the others come with the start weights.
_FREE_LAYOUT_KEYS = set(LAYOUT_KEYS) - set(STORED_LAYOUT_KEYS)

log = logging.getLogger("llm")


def start_kind(path: Path) -> str:
    """workdir | export | hf, or a UserError naming what PRE should be."""
    if (path / "checkpoints").is_dir() and (path / "config.json").is_file():
        return "workdir"
    if (path / "params").is_dir() and (path / "config.json").is_file():
        return "export"
    from llm.interop.hf_config import is_hf_model_dir
    from llm.interop.safetensors_io import weight_files

    if is_hf_model_dir(path):
        weight_files(path)  # the same refusal as `llm convert` (pickles, missing weights)
        return "hf"
    raise UserError(
        f"--init-from {str(path)!r} is not a training workdir (checkpoints/), a params checkpoint (params/ + config.json) "
        "or a Hugging Face model directory (config.json + *.safetensors)"
    )


def _set_model(config: ml_collections.ConfigDict, model: dict) -> None:
    for key, value in model.items():
        if key in _FREE_LAYOUT_KEYS:
            continue
        if isinstance(value, dict):
            for sub, v in value.items():
                config.model[key][sub] = v
        else:
            config.model[key] = tuple(value) if isinstance(value, list) else value


def _check_overrides(config_model: dict, start_model: dict, overrides: Iterable[str], where: str) -> None:
    """A --config.model.* override that disagrees with the start weights would be ignored: refuse it."""
    touched = {o.split("=", 1)[0][len("model."):].split(".")[0] for o in overrides if o.startswith("model.")}
    touched -= _FREE_LAYOUT_KEYS
    diffs = model_mismatch(start_model, config_model) + stored_layout_mismatch(start_model, config_model)
    diffs = [d for d in diffs if d.split(":")[0][len("model."):] in touched]
    if diffs:
        raise UserError(f"{diffs[0]}: the model comes from --init-from {where}; drop the --config.model override")


def apply_init_from(config: ml_collections.ConfigDict, init_from: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Point checkpoint.init_from(_hf) at PRE and take its model section and tokenizer (unless
    --config.data.tokenizer names another: the start then checks the two fingerprints)."""
    path = Path(init_from)
    own_tokenizer = any(o.split("=", 1)[0] == "data.tokenizer" for o in overrides)
    if not path.exists():
        raise UserError(f"--init-from {init_from!r} does not exist; pass a workdir, an `llm export` directory or a Hugging Face model directory")
    kind = start_kind(path)
    user_model = json.loads(config.model.to_json_best_effort())
    if kind == "hf":
        from llm.interop.hf_import import tokenizer_source
        from llm.train.init_sources import apply_hf_architecture

        config.checkpoint.init_from_hf = str(path)
        config.checkpoint.init_from = ""
        config = apply_hf_architecture(config)
        if tokenizer_source(path) is not None:
            if own_tokenizer:
                from llm.data.tokenizer import load_tokenizer
                from llm.train.init_sources import check_tokenizer

                check_tokenizer(load_tokenizer(path).fingerprint, config, f"--init-from {str(path)!r}")
            else:
                from llm.interop.hf_tokenizer import apply_hf_startup

                config.data.tokenizer = str(path)
                apply_hf_startup(config, path)  # data.add_bos as the model's tokenizer adds BOS
        _check_overrides(user_model, json.loads(config.model.to_json_best_effort()), overrides, str(path))
        return config
    saved = config_from_json((path / "config.json").read_text(), str(path / "config.json"))
    if kind == "workdir" and _checkpoints_hold_part(saved):
        merged = path / "merged"
        if not ((merged / "params").is_dir() and (merged / "config.json").is_file()):
            raise UserError(
                f"--init-from {init_from!r} is a LoRA / partial fine-tuning run whose checkpoints hold only the trained part; "
                "its whole model is written to merged/ when the run finishes: finish it (finetune.export_merged=true) or pass an export"
            )
        log.info("--init-from %s: a LoRA / partial fine-tuning run, starting from its merged weights %s", path, merged)
        return apply_init_from(config, str(merged), overrides)
    start_model = json.loads(saved.model.to_json_best_effort())
    _check_overrides(user_model, start_model, overrides, str(path))
    _set_model(config, start_model)
    config.checkpoint.init_from = str(path.absolute())
    config.checkpoint.init_from_hf = ""
    tokenizer_dir = path / "tokenizer"
    if not own_tokenizer:
        config.data.tokenizer = str(tokenizer_dir.absolute()) if tokenizer_dir.is_dir() else saved.data.tokenizer
    log.info("fine-tuning starts from %s %s: model from there, tokenizer %s", kind, path, config.data.tokenizer)
    return config


def _checkpoints_hold_part(saved: ml_collections.ConfigDict) -> bool:
    """Whether a workdir's checkpoints hold only part of its model (adapters, unfrozen weights, a head)."""
    p, f = saved.peft, saved.finetune
    return bool(p.lora_rank) or bool(p.freeze) or f.task in ("classification", "reward")


def apply_data(config: ml_collections.ConfigDict, data: str) -> ml_collections.ConfigDict:
    """A manifest (its split files for the task) or JSONL files (a held-out fraction for eval)."""
    manifest = manifest_path_for(data)
    if manifest is not None:
        config.data.path = str(manifest.absolute())
        config.data.source = "jsonl"
        config.data.eval_path = ""
        return config
    path = Path(data)
    if path.is_dir():
        raise UserError(f"--data {data!r} is a directory without manifest.json; pass a JSONL file, a glob or a manifest.json")
    if "*" not in data and not path.is_file():
        raise UserError(f"--data {data!r} does not exist; pass a JSONL file, a glob or the manifest.json of `llm data builtin`")
    config.data.source = "jsonl"
    config.data.path = data
    return config


def resolve_chat_template(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """data.chat_template="" means the tokenizer's own template; without one, say so."""
    if config.data.chat_template:
        return config
    tok = Path(config.data.tokenizer)
    candidate = tok / "chat_template.json" if tok.is_dir() else None
    if candidate is None or not candidate.is_file():
        raise UserError(
            f"data.chat_template is empty and tokenizer {config.data.tokenizer!r} has no chat template; "
            "set data.chat_template=default, chatml or a JSON file mapping each role to [prefix, suffix]"
        )
    raw = json.loads(candidate.read_text())
    if not all(isinstance(raw.get(role), list) for role in ("system", "user", "assistant")):
        raise UserError(
            f"{str(candidate)!r} is not a role -> [prefix, suffix] template (a Jinja chat template cannot be used); "
            "set data.chat_template=default, chatml or a JSON file"
        )
    config.data.chat_template = str(candidate)
    return config


def copy_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """An unlocked-field-safe copy on the current schema (so callers never mutate the original)."""
    out = config_from_json(json.dumps(config.to_dict()), "config")
    return out
