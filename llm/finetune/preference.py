"""Preference tuning (`llm dpo`): the DPO family of losses (llm.rl.dpo_losses) over packed
preference pairs, fully or with LoRA / QLoRA, on the one training loop.

The reference policy never costs a second model:
- `adapters_off` (LoRA / QLoRA): the same frozen base arrays with the adapters' `lora_b` set to
  zero, which is the start policy exactly (adapters start at B = 0); no copy of the base.
- `precompute` (full fine-tuning): one pass of the start weights over both splits before the
  first step; the per-sequence sums are stored in <workdir>/reference_logps.npz and ride in the
  batches (`ref_logps`), so training holds one model. A resumed run reads the file back.
- `none`: simpo and orpo have no reference.

The step contract is (loss sum, {"tokens": count, "<metric>_sum": ...}); here "tokens" counts
pairs, so the logged loss and metrics are means over the pairs of a step (with gradient
accumulation too), named as TRL names them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from llm.checkpoint.manager import LAYOUT_KEYS
from llm.config.base import base_config
from llm.errors import ConfigError, UserError
from llm.finetune.pair_data import PairData, check_pair_config, heldout_metrics, load_pair_data, pairs_of, per_pair
from llm.finetune.recipe import Runtime, Task, full_tree, run_finetune
from llm.peft.split import combine
from llm.pytree import path_keys
from llm.rl.dpo_losses import DPOLoss, dpo_loss
from llm.rl.logprobs import segment_sums, token_logprobs

log = logging.getLogger("llm")

REFERENCES = ("auto", "precompute", "adapters_off", "none")
REFERENCE_FILE = "reference_logps.npz"


def dpo_spec(config: ml_collections.ConfigDict) -> DPOLoss:
    """The loss of `config.dpo`; a constant set for another loss is an error, not ignored."""
    d, default = config.dpo, base_config().dpo
    for name, owner in (("simpo_gamma", "simpo"), ("orpo_lambda", "orpo")):
        if d.loss != owner and d[name] != default[name]:
            raise ConfigError(f"dpo.{name}={d[name]} is read only by dpo.loss={owner}, not {d.loss}; unset it")
    return DPOLoss(
        loss=d.loss, beta=float(d.beta), label_smoothing=float(d.label_smoothing),
        simpo_gamma=float(d.simpo_gamma) if d.loss == "simpo" else None,
        orpo_lambda=float(d.orpo_lambda) if d.loss == "orpo" else None,
        sft_weight=float(d.sft_weight),
    )


def resolve_reference(config: ml_collections.ConfigDict) -> str:
    """precompute | adapters_off | none for this config (dpo.reference=auto picks per method)."""
    spec, ref = dpo_spec(config), config.dpo.reference
    if ref not in REFERENCES:
        raise ConfigError(f"dpo.reference={ref!r} is not one of {', '.join(REFERENCES)}")
    lora = config.peft.lora_rank > 0
    if not spec.needs_reference:
        if ref in ("precompute", "adapters_off"):
            raise ConfigError(f"dpo.loss={spec.loss} has no reference policy but dpo.reference={ref}; set dpo.reference=none (or auto)")
        return "none"
    if ref == "none":
        raise ConfigError(f"dpo.loss={spec.loss} compares the policy with a reference; set dpo.reference=auto, or use simpo or orpo")
    if ref == "auto":
        return "adapters_off" if lora else "precompute"
    if ref == "adapters_off" and not lora:
        raise ConfigError("dpo.reference=adapters_off needs LoRA adapters (peft.lora_rank > 0); use precompute for full fine-tuning")
    return ref


def adapters_off(trainable: Any) -> Any:
    """The trainable tree with every LoRA `lora_b` zeroed: the adapted model computes the base."""

    def off(path, leaf):
        return jnp.zeros_like(leaf) if "lora_b" in path_keys(path) else jax.lax.stop_gradient(leaf)

    return jax.tree_util.tree_map_with_path(off, trainable)


def sequence_sums(model, batch: dict, max_segments: int, full: bool = False) -> tuple[jax.Array, ...]:
    """Per-segment (answer log-prob sums, answer token counts), and with `full` also the sums
    and counts over every target of the segment (prompt and answer: orpo's NLL)."""
    hidden = model.hidden_states(batch["inputs"], batch["positions"], batch["segment_ids"])
    logprobs = token_logprobs(model, hidden, batch["targets"])
    seg = batch["segment_ids"]
    out = segment_sums(logprobs, batch["loss_mask"], seg, max_segments)
    if full:
        out += segment_sums(logprobs, (seg > 0).astype(jnp.float32), seg, max_segments)
    return out


def dpo_loss_builder(config: ml_collections.ConfigDict):
    """(graphdef, runtime, train) -> loss_fn(trainable, frozen, batch, rng), the Task contract."""
    spec, reference = dpo_spec(config), resolve_reference(config)
    max_segments = 2 * int(config.dpo.max_pairs_per_row)
    full_nll = spec.loss == "orpo"

    def build(graphdef, runtime: Runtime, train: bool):
        def loss_fn(trainable, frozen, batch, rng):
            policy = nnx.merge(graphdef, full_tree(trainable, frozen, runtime(rng if train else None)))
            sums = sequence_sums(policy, batch, max_segments, full=full_nll)
            chosen, rejected = pairs_of(sums[0])
            n_chosen, n_rejected = pairs_of(sums[1])
            kwargs = {}
            if reference == "adapters_off":
                ref_model = nnx.merge(graphdef, full_tree(adapters_off(trainable), frozen, runtime(None)))
                ref = jax.lax.stop_gradient(sequence_sums(ref_model, batch, max_segments)[0])
                kwargs["ref_chosen_logps"], kwargs["ref_rejected_logps"] = pairs_of(ref)
            elif reference == "precompute":
                seg = batch["segment_ids"]
                ref = segment_sums(batch["ref_logps"], (seg > 0).astype(jnp.float32), seg, max_segments)[0]
                kwargs["ref_chosen_logps"], kwargs["ref_rejected_logps"] = pairs_of(ref)
            if full_nll:
                kwargs["chosen_nll_logps"], _ = pairs_of(sums[2])
                kwargs["chosen_nll_tokens"], _ = pairs_of(sums[3])
            mask = n_chosen > 0
            loss, metrics = dpo_loss(spec, chosen, rejected, n_chosen, n_rejected, pair_mask=mask, **kwargs)
            n = jnp.sum(mask).astype(jnp.float32)
            aux = {"tokens": n, **{f"{k}_sum": v * n for k, v in metrics.items()}}
            return loss * n, aux

        return loss_fn

    return build


def data_fingerprint(data: PairData, config: ml_collections.ConfigDict) -> str:
    """Which pairs, which start weights and which model: what the reference log-probs depend on."""
    h = hashlib.sha256()
    for split in ("train", "validation"):
        for pair in data.pairs(split):
            for part in (pair.prompt, pair.chosen, pair.rejected):
                h.update(np.asarray(part, np.int32).tobytes())
                h.update(b"|")
    model = {k: v for k, v in json.loads(config.model.to_json_best_effort()).items() if k not in LAYOUT_KEYS}  # remat etc. may change on resume
    start = {"init_from": config.checkpoint.init_from, "init_from_hf": config.checkpoint.init_from_hf,
             "model": model, "peft": json.loads(config.peft.to_json_best_effort())}
    h.update(json.dumps(start, sort_keys=True).encode())
    return h.hexdigest()


def reference_hook(data: PairData, config: ml_collections.ConfigDict, workdir: Path):
    """The loop's on_start: reference log-probs of both splits from the start weights, computed
    once and kept in the workdir."""
    max_segments = 2 * int(config.dpo.max_pairs_per_row)
    path = workdir / REFERENCE_FILE

    def on_start(setup, state, frozen) -> None:
        fingerprint = data_fingerprint(data, config)
        if path.is_file():
            stored = np.load(path)
            if str(stored["fingerprint"]) != fingerprint:
                raise UserError(f"{path} was computed for other pairs or start weights; use a fresh --workdir (or --overwrite)")
            for split in ("train", "validation"):
                data.values[split]["ref_logps"] = stored[split]
            log.info("reference log-probs read from %s", path)
            return
        if int(jax.device_get(state.step)) > 0:
            raise UserError(f"{path} is missing from a run that has checkpoints; restore it or start again with --overwrite")

        @jax.jit
        def answer_sums(params, frozen, batch):
            model = nnx.merge(setup.graphdef, combine(params, frozen))
            return sequence_sums(model, batch, max_segments)[0]

        tables = {split: per_pair(data, split, setup, answer_sums, state.params, frozen) for split in ("train", "validation")}
        for split, table in tables.items():
            data.values[split]["ref_logps"] = table
        if jax.process_index() == 0:
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, fingerprint=np.asarray(fingerprint), **tables)
            os.replace(tmp, path)
        log.info("reference log-probs of %d + %d pairs computed from the start weights: %s",
                 len(data.train), len(data.validation), path)

    return on_start


def check_dpo_config(config: ml_collections.ConfigDict) -> None:
    check_pair_config(config, "dpo", "llm dpo")
    resolve_reference(config)


def dpo_task(config: ml_collections.ConfigDict, workdir: Path) -> Task:
    data = load_pair_data(config, "policy", int(config.dpo.max_pairs_per_row))
    reference = resolve_reference(config)
    log.info("dpo: loss %s, beta %g, reference %s", config.dpo.loss, config.dpo.beta, reference)
    return Task(
        name="dpo",
        loss_fn=dpo_loss_builder(config),
        make_batches=data.make_batches,
        final_metrics=heldout_metrics(data, config, workdir, "rewards/margins"),
        on_start=reference_hook(data, config, workdir) if reference == "precompute" else None,
    )


def run_dpo(config: ml_collections.ConfigDict, workdir: str | Path, *, overwrite: bool = False) -> dict:
    check_dpo_config(config)
    workdir = Path(workdir)
    return run_finetune(config, workdir, dpo_task(config, workdir), overwrite=overwrite)
