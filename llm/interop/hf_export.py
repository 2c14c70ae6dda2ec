"""Export our params + config as a Hugging Face model directory that transformers'
`from_pretrained` loads unchanged: config.json, (sharded) safetensors, tokenizer files.

Tensors stream to disk one at a time (gathered from their devices, transformed, written), so an
export holds at most one tensor on the host beyond the params themselves.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from llm.checkpoint.params_io import copy_tokenizer_files, tokenizer_files
from llm.errors import UserError
from llm.interop.hf_config import compatible_model_type, config_to_hf
from llm.interop.safetensors_io import TensorEntry, write_safetensors
from llm.interop.weight_map import Rule, weight_rules
from llm.model.spec import model_spec

log = logging.getLogger("llm")

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
_EXPORT_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(jax.numpy.bfloat16), "float16": np.dtype(np.float16)}


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(text: str) -> int:
    """'5GB', '500MB', '2GiB' or a byte count."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*", text.lower())
    if not match or match.group(2) not in _UNITS:
        raise UserError(f"cannot parse size {text!r}; write e.g. 5GB or 500MB")
    value = int(float(match.group(1)) * _UNITS[match.group(2)])
    if value <= 0:
        raise UserError(f"size {text!r} must be positive")
    return value


def to_host(x: jax.Array) -> np.ndarray:
    """The full array on this host (an all-gather when other processes hold shards)."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _leaf(params: Any, path: tuple, scanned: bool) -> np.ndarray:
    """One parameter in the unscanned layout, fetched to the host."""
    if scanned and path[0] == "blocks":
        node = params["blocks"]
        for key in path[2:]:
            node = node[key]
        return to_host(node[path[1]])
    node = params
    for key in path:
        node = node[key]
    return to_host(node)


def _entry(rule: Rule, params: Any, scanned: bool, dtype: np.dtype) -> TensorEntry:
    def produce() -> np.ndarray:
        return rule.to_hf([_leaf(params, p, scanned) for p in rule.ours]).astype(dtype, copy=False)

    return TensorEntry(rule.hf, rule.hf_shape, dtype, produce)


def _token_ids(tokenizer_dir: Path | None) -> dict:
    if tokenizer_dir is None or not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        return {}
    from llm.interop.hf_tokenizer import load_hf_tokenizer

    tok = load_hf_tokenizer(tokenizer_dir)
    return {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}


def export_hf(
    config: ml_collections.ConfigDict,
    params: Any,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    *,
    dtype: str | None = None,
    model_type: str | None = None,
    source_hf_config: dict | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    reward_head: np.ndarray | None = None,
    pad_token_id: int | None = None,
    source_generation_config: dict | None = None,
) -> Path:
    """Write `params` (our pure dict, any sharding, scanned or not) as a transformers model.

    dtype: of the written tensors (default: the params' dtype). model_type: llama | mistral |
    qwen2 | gpt2 (default: the source checkpoint's type if `source_hf_config` is given, else
    gpt2 for GPT-2, qwen2 with q/k/v biases, llama otherwise). reward_head: a (d_model, 1)
    kernel: write a num_labels=1 `*ForSequenceClassification` instead (llm.interop.hf_reward),
    with `pad_token_id` (default: the tokenizer's). bos/eos/pad ids: the source config.json's
    (an eos list stays a list), the tokenizer's where it has none; generation_config.json gets
    the source's own (`source_generation_config`: its sampling defaults too) with those ids.
    Every process must call this; process 0 writes.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{str(out_dir)!r} is not empty; choose a new --out directory")
    embed = params["embed"]
    spec = model_spec(config)
    if embed.shape[0] < spec.vocab_size:
        raise UserError(f"params have {embed.shape[0]} embedding rows, fewer than model.vocab_size={spec.vocab_size}")
    scanned = "attn" in params["blocks"]  # the layout of these params, whatever the config says
    spec = dataclasses.replace(spec, padded_vocab=int(embed.shape[0]), scan_layers=scanned)
    source = source_hf_config or {}
    if model_type is None and compatible_model_type(config, source.get("model_type")):
        model_type = source["model_type"]  # e.g. an imported Mistral goes back out as Mistral
    stored = {np.dtype(x.dtype).name for x in jax.tree_util.tree_leaves(params)}
    dtype = dtype or (stored.pop() if len(stored) == 1 else "float32")
    if dtype not in _EXPORT_DTYPES:
        raise UserError(f"export dtype {dtype!r} is not one of {', '.join(_EXPORT_DTYPES)}")
    token_ids = {k: source[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if source.get(k) is not None}
    token_ids.update({k: v for k, v in _token_ids(tokenizer_dir).items() if v is not None and k not in token_ids})
    hf_config = config_to_hf(config, model_type, dtype, token_ids)
    rules = weight_rules(spec)
    extra = []
    if reward_head is not None:
        from llm.interop.hf_reward import as_sequence_classifier

        hf_config, rules, extra = as_sequence_classifier(hf_config, rules, reward_head, _EXPORT_DTYPES[dtype], pad_token_id)
    entries = [_entry(r, params, spec.scan_layers, _EXPORT_DTYPES[dtype]) for r in rules] + extra
    write = jax.process_index() == 0
    write_safetensors(out_dir, entries, max_shard_bytes, write=write)
    if write:
        (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
        if reward_head is None:
            from llm.interop.hf_generation import export_generation_config

            export_generation_config(source_generation_config, token_ids, out_dir)
        if tokenizer_dir is not None and tokenizer_files(tokenizer_dir):
            copy_tokenizer_files(tokenizer_dir, out_dir)
        elif tokenizer_dir is not None:
            log.warning("%s holds no tokenizer files; the export has no tokenizer", tokenizer_dir)
    return out_dir
