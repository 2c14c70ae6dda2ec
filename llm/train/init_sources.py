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

# Model layout keys (of manager.LAYOUT_KEYS) that change the stored parameter tree: scan_layers
# stacks the layers into one array per weight. Every other layout key restores under any value.
STORED_LAYOUT_KEYS = ("scan_layers",)


def apply_hf_architecture(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """With init_from_hf, the model section comes from the Hugging Face config.json."""
    src = config.checkpoint.init_from_hf
    if not src or config.checkpoint.init_from:
        return config
    from llm.interop.hf_config import hf_to_config, read_hf_config

    return hf_to_config(read_hf_config(src), config)


def _check_model(saved_model: dict, config: ml_collections.ConfigDict, where: str) -> None:
    current = json.loads(config.model.to_json_best_effort())
    diffs = model_mismatch(saved_model, current)
    if diffs:
        raise UserError(f"{where} holds a different model ({'; '.join(diffs[:3])}); use its config or another checkpoint")
    stored = stored_layout_mismatch(saved_model, current)
    if stored:
        key = stored[0].split(":")[0]
        raise UserError(
            f"{where} stores its weights with {key}={saved_model[key[len('model.'):]]!r} ({stored[0]}); "
            f"set {key}={saved_model[key[len('model.'):]]!r}: it changes how the checkpoint stores the layers"
        )


def stored_layout_mismatch(saved: dict, current: dict) -> list[str]:
    """Differences in STORED_LAYOUT_KEYS (which `model_mismatch` skips as layout), same format."""
    return [
        f"model.{key}: checkpoint {saved[key]!r} vs config {current.get(key)!r}"
        for key in STORED_LAYOUT_KEYS if key in saved and saved[key] != current.get(key)
    ]


def check_tokenizer(saved_fingerprint: str | None, config: ml_collections.ConfigDict, where: str, current: str | None = None) -> None:
    """Refuse start weights trained with another tokenizer (of the same size: a different size is
    already a different model), unless checkpoint.allow_tokenizer_mismatch says to go on."""
    if not saved_fingerprint:
        return
    if current is None:
        from llm.data.tokenizer import load_tokenizer

        current = load_tokenizer(config.data.tokenizer).fingerprint
    if current == saved_fingerprint:
        return
    what = f"{where} was trained with tokenizer {saved_fingerprint[:12]}, but this run's data.tokenizer={config.data.tokenizer!r} is {current[:12]}"
    if config.checkpoint.allow_tokenizer_mismatch:
        log.warning("%s; starting from its weights anyway (checkpoint.allow_tokenizer_mismatch=true)", what)
        return
    raise UserError(f"{what}; use its tokenizer, or set checkpoint.allow_tokenizer_mismatch=true to start from its weights anyway")


def _workdir_fingerprint(path: Path, config: ml_collections.ConfigDict) -> str | None:
    ckpt = Checkpointer(path, config, read_only=True)
    try:
        steps = ckpt.steps()
        return ckpt.read_metadata(steps[-1]).get("tokenizer_fingerprint") if steps else None
    finally:
        ckpt.close()


def _export_fingerprint(path: Path) -> str | None:
    """The tokenizer stored with a params checkpoint (or the byte tokenizer it names); None if unknown."""
    from llm.checkpoint.params_io import TOKENIZER_DIR, load_config_json, tokenizer_files
    from llm.data.tokenizer import load_tokenizer

    if tokenizer_files(path / TOKENIZER_DIR):
        return load_tokenizer(path / TOKENIZER_DIR).fingerprint
    if load_config_json(path).data.tokenizer == "bytes":
        return load_tokenizer("bytes").fingerprint
    return None


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


def init_params_hook(config: ml_collections.ConfigDict, tokenizer_fingerprint: str | None = None) -> Callable | None:
    """A `(setup, params) -> (params, description)` hook for the loop, or None (from scratch).

    The start weights' tokenizer is checked here, before any model is built; pass the run's
    tokenizer fingerprint if known (else it is read from data.tokenizer)."""
    init_from, init_hf = config.checkpoint.init_from, config.checkpoint.init_from_hf
    if init_from and init_hf:
        log.warning("both checkpoint.init_from and checkpoint.init_from_hf are set; init_from takes precedence")
    if init_from:
        path = Path(init_from)
        if (path / "checkpoints").is_dir():
            check_tokenizer(_workdir_fingerprint(path, config), config, f"checkpoint.init_from={init_from!r}", tokenizer_fingerprint)
            return lambda setup, params: _from_workdir(path, setup, params)
        if (path / "config.json").is_file() and (path / "params").is_dir():
            check_tokenizer(_export_fingerprint(path), config, f"checkpoint.init_from={init_from!r}", tokenizer_fingerprint)
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
