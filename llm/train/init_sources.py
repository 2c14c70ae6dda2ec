"""Where a new run's weights come from when the workdir has no checkpoint to resume:
`checkpoint.init_from` (a params-only checkpoint or another run's workdir, weights only) or
`checkpoint.init_from_hf` (a Hugging Face model directory); otherwise from scratch."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import jax
import ml_collections

from llm.checkpoint.manager import Checkpointer, model_mismatch
from llm.errors import UserError

log = logging.getLogger("llm")


def apply_hf_architecture(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """With init_from_hf, the model section comes from the Hugging Face config.json."""
    src = config.checkpoint.init_from_hf
    if not src or config.checkpoint.init_from:
        return config
    from llm.interop.hf_config import hf_to_config, read_hf_config

    return hf_to_config(read_hf_config(src), config)


def _check_model(saved_model: dict, config: ml_collections.ConfigDict, where: str) -> None:
    diffs = model_mismatch(saved_model, json.loads(config.model.to_json_best_effort()))
    if diffs:
        raise UserError(f"{where} holds a different model ({'; '.join(diffs[:3])}); use its config or another checkpoint")


def _from_workdir(path: Path, setup, params: Any) -> tuple[Any, str]:
    ckpt = Checkpointer(path, setup.config, read_only=True)
    steps = ckpt.steps()
    if not steps:
        raise UserError(f"checkpoint.init_from={str(path)!r} is a workdir without checkpoints; train it first or point at an export")
    step = steps[-1]
    _check_model(ckpt.read_metadata(step).get("config", {}).get("model", {}), setup.config, f"{path}/checkpoints/{step}")
    import orbax.checkpoint as ocp

    from llm.pytree import abstract_like

    restored = ckpt.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item={"params": abstract_like(params)},
            restore_args=ocp.checkpoint_utils.construct_restore_args({"params": abstract_like(params)}),
            partial_restore=True,
        ))
    )
    ckpt.close()
    return restored["state"]["params"], f"init_from {path}/checkpoints/{step} (weights only)"


def _from_export(path: Path, setup, params: Any) -> tuple[Any, str]:
    from llm.checkpoint.params_io import load_config_json, load_params

    saved = load_config_json(path)
    _check_model(json.loads(saved.model.to_json_best_effort()), setup.config, str(path))
    shardings = jax.tree_util.tree_map(lambda x: x.sharding, params)
    _, loaded = load_params(path, shardings)
    loaded = jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), loaded, params)
    return loaded, f"init_from {path} (params-only checkpoint)"


def init_params_hook(config: ml_collections.ConfigDict) -> Callable | None:
    """A `(setup, params) -> (params, description)` hook for the loop, or None (from scratch)."""
    init_from, init_hf = config.checkpoint.init_from, config.checkpoint.init_from_hf
    if init_from and init_hf:
        log.warning("both checkpoint.init_from and checkpoint.init_from_hf are set; init_from takes precedence")
    if init_from:
        path = Path(init_from)
        if (path / "checkpoints").is_dir():
            return lambda setup, params: _from_workdir(path, setup, params)
        if (path / "config.json").is_file() and (path / "params").is_dir():
            return lambda setup, params: _from_export(path, setup, params)
        raise UserError(
            f"checkpoint.init_from={init_from!r} is neither a workdir with checkpoints/ nor a params checkpoint "
            "(config.json + params/); pass one of those"
        )
    if init_hf:

        def from_hf(setup, params):
            from llm.interop.hf_import import load_hf_checkpoint

            _, _, loaded = load_hf_checkpoint(init_hf, setup.rules, base=setup.config, seed=setup.config.train.seed)
            return loaded, f"init_from_hf {init_hf}"

        return from_hf
    return None
