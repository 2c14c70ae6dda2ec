"""What a finished fine-tuning run leaves in its workdir besides checkpoints:

  merged/   the fine-tuned weights as one params-only checkpoint (`llm generate --checkpoint`,
            `llm convert`), adapters folded in; a QLoRA run folds them into the original
            (unquantized) start weights, as QLoRA is deployed
  adapter/  LoRA runs: the adapters alone (llm.peft.adapters_io)
  peft/     LoRA runs without a classification / reward head: the adapters in Hugging Face PEFT
            format (llm.peft.hf_peft)

The training checkpoints of a LoRA run hold only the adapters and their optimizer state.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from llm.checkpoint.params_io import save_params
from llm.finetune.start import copy_config
from llm.model.build import init_params
from llm.peft import lora
from llm.peft.adapters_io import save_adapters
from llm.peft.hf_peft import export_peft
from llm.peft.lora import LoraInfo
from llm.peft.quant import QTensor
from llm.peft.spec import PeftSpec
from llm.peft.split import combine
from llm.pytree import path_str
from llm.train.init_sources import init_params_hook

log = logging.getLogger("llm")

HEAD_FILE = "classification_head.safetensors"


def dequantize_all(tree: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda x: x.dequantize() if isinstance(x, QTensor) else x, tree, is_leaf=lambda x: isinstance(x, QTensor)
    )


def original_base(setup) -> dict:
    """The start weights again (what a QLoRA run quantized), from the run's init source."""
    hook = init_params_hook(setup.config)
    if hook is not None:
        params, _ = hook(setup, setup.base_params)
        return params
    return init_params(setup.spec, setup.rules, setup.config.train.seed)[1]


def export_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The run's config describing plain weights: nothing left to adapt or quantize."""
    out = copy_config(config)
    out.peft.lora_rank = 0
    out.peft.quantize = ""
    out.peft.freeze = ()
    return out


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def write_merged(directory: Path, config, params: Any, tokenizer_dir: Path | None, head: Any = None,
                 head_file: str = HEAD_FILE) -> None:
    if directory.exists() and jax.process_index() == 0:
        log.info("replacing %s", directory)
        shutil.rmtree(directory)
    _sync("llm-merged-clean")
    save_params(directory, params, export_config(config), tokenizer_dir)
    if head is not None and jax.process_index() == 0:
        from safetensors.numpy import save_file

        leaves = jax.tree_util.tree_leaves_with_path(head)  # a nested head (PPO's critic): "params/blocks/..." keys
        save_file({path_str(p): np.asarray(jax.device_get(v), np.float32) for p, v in leaves}, str(directory / head_file))


def write_outputs(
    workdir: Path, config: ml_collections.ConfigDict, setup, trainable: Any, frozen: Any, spec: PeftSpec,
    info: LoraInfo | None, head_key: str | None, head_file: str = HEAD_FILE, head_outside_model: bool = False,
) -> list[str]:
    written = []
    full = combine(trainable, frozen)
    head = full.pop(head_key) if head_key else None
    model_json = json.loads(config.model.to_json_best_effort())
    if info is not None:
        _, adapters = lora.unmerge(full)
        save_adapters(workdir / "adapter", adapters, info, model_json, config.peft.to_dict())
        written.append("adapter")
        if head_key is None or head_outside_model:  # a classification head is part of the model: no PEFT form
            base = config.checkpoint.init_from_hf or config.checkpoint.init_from
            export_peft(workdir / "peft", adapters, info, setup.spec, spec, base_model=base)
            written.append("peft")
    if config.finetune.export_merged:
        if info is not None:
            if spec.quantize:
                full = combine(adapters, original_base(setup))
            merged = lora.merge(full, info)
        else:
            merged = full
        tokenizer = workdir / "tokenizer"
        write_merged(workdir / "merged", config, dequantize_all(merged), tokenizer if tokenizer.is_dir() else None, head, head_file)
        written.append("merged")
    return written
