"""Turn a training checkpoint into a params-only checkpoint (llm.checkpoint.params_io)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from llm.checkpoint.manager import Checkpointer
from llm.checkpoint.params_io import config_from_json, int_keys, save_params
from llm.errors import UserError

log = logging.getLogger("llm")


def restore_params(workdir: str | Path, step: int = -1) -> tuple:
    """(config, params on the default device, step) from a workdir's checkpoint, weights only."""
    workdir = Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.is_file():
        raise UserError(f"{str(workdir)!r} is not a run workdir (no config.json); pass the --workdir of an `llm train` run")
    config = config_from_json(config_path.read_text(), str(config_path))
    ckpt = Checkpointer(workdir, config, read_only=True)
    steps = ckpt.steps()
    if not steps:
        raise UserError(f"{str(workdir)!r} has no checkpoints; train first")
    if step >= 0 and step not in steps:
        raise UserError(f"no checkpoint for step {step} in {ckpt.directory} (available: {steps})")
    candidates = [step] if step >= 0 else list(reversed(steps))
    ckpt.close()
    if config.peft.lora_rank or config.peft.freeze or config.finetune.task in ("classification", "reward"):  # see _fine_tuned
        return _fine_tuned(workdir, step, steps[-1])
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    for candidate in candidates:
        path = ckpt.directory / str(candidate) / "state"
        try:
            checkpointer = ocp.PyTreeCheckpointer()
            meta = checkpointer.metadata(path)
            tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree
            target = {"params": jax.tree_util.tree_map(
                lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device), tree["params"]
            )}
            restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True,
            ))
            return config, int_keys(restored["params"]), candidate
        except Exception as err:  # noqa: BLE001 - damaged checkpoint: try the previous one
            if step >= 0:
                raise UserError(f"checkpoint {path.parent} is damaged ({type(err).__name__}); export another step") from err
            log.warning("checkpoint %s is damaged (%s); trying the previous one", path.parent, type(err).__name__)
    raise UserError(f"every checkpoint in {ckpt.directory} is damaged")


def _fine_tuned(workdir: Path, step: int, last: int) -> tuple:
    """A LoRA / partial fine-tuning run: its whole model is <workdir>/merged (written at the end)."""
    from llm.checkpoint.params_io import load_params

    merged = workdir / "merged"
    if step >= 0 and step != last or not (merged / "params").is_dir():
        raise UserError(
            f"{str(workdir)!r} is a LoRA or partial fine-tuning run: its checkpoints hold only the trained parameters; "
            f"its full weights are {merged}, written when the run finishes (finetune.export_merged)"
        )
    config, params = load_params(merged)
    log.info("%s is a fine-tuning run; its full weights come from %s", workdir, merged)
    return config, params, last


def export_workdir(workdir: str | Path, out: str | Path, step: int = -1, dtype: str | None = None) -> Path:
    config, params, at = restore_params(workdir, step)
    tokenizer_dir = Path(workdir) / "tokenizer"
    out = save_params(out, params, config, tokenizer_dir if tokenizer_dir.is_dir() else None, dtype=dtype)
    head = Path(workdir) / "merged" / "reward_head.safetensors"  # a reward model keeps its head (llm.interop.hf_reward)
    if config.finetune.task == "reward" and head.is_file() and jax.process_index() == 0:
        shutil.copyfile(head, out / head.name)
    log.info("exported step %d of %s to %s", at, workdir, out)
    return out
