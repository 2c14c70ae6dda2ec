"""A fine-tuning run: the training loop with a task's loss, data and head, the parameter split
from `config.peft`, early stopping, and at the end the cost report, the merged weights and the
adapters. SFT and classification are two tasks of this one recipe.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

import jax
import ml_collections
from flax import nnx

from llm.finetune.cost import cost_report, from_metrics, method_name, write_cost
from llm.finetune.outputs import write_outputs
from llm.model.build import abstract_model
from llm.model.spec import model_spec
from llm.parallel.rules import AxisRules
from llm.peft import lora
from llm.peft.lora import LoraInfo
from llm.peft.spec import PeftSpec, peft_spec
from llm.peft.split import combine, split_params
from llm.pytree import merge_trees
from llm.train.early_stop import stop_where_stopped
from llm.train.loop import RunHooks, run_training
from llm.train.partition import Partition

log = logging.getLogger("llm")

# runtime(rng or None) -> extra leaves the graphdef needs each step (LoRA dropout keys and rate).
Runtime = Callable[[Any], dict]


@dataclasses.dataclass(frozen=True)
class Task:
    """What differs between fine-tuning tasks."""

    name: str
    loss_fn: Callable[[Any, Runtime, bool], Callable]  # (graphdef, runtime, train) -> loss_fn
    head: Callable[[Any, Any, int], dict] | None = None  # (graphdef, full params, seed) -> extra trainable subtree
    make_batches: Callable | None = None  # the loop's make_batches hook (None: the LM data pipeline)
    final_metrics: Callable | None = None  # (setup, trainable, frozen) -> dict, added to cost.json
    head_key: str | None = None  # top-level key of the head in the trainable tree
    head_file: str = "classification_head.safetensors"  # the head's file in merged/
    head_outside_model: bool = False  # the head is no part of the model (PPO's critic): peft/ is written too
    on_start: Callable | None = None  # the loop's on_start hook (setup, state, frozen)
    next_batch: Callable | None = None  # the loop's next_batch hook (on-policy RL: rollouts)
    evaluate: Callable | None = None  # the loop's evaluate hook (RL: held-out rewards instead of a loss)
    progress_keys: tuple[str, ...] = ()  # the loop's progress-bar metrics


def full_tree(trainable: Any, frozen: Any, extra: dict) -> dict:
    """The whole parameter tree a step's model merges with: the trainable and frozen parts and
    the runtime leaves (`Runtime`: LoRA dropout keys and rate), when there are any."""
    tree = combine(trainable, frozen)
    return merge_trees(tree, extra) if extra else tree


def lora_info(config: ml_collections.ConfigDict, spec: PeftSpec) -> LoraInfo | None:
    """The adapters a config asks for, from the abstract model (no memory, no mesh)."""
    if not spec.lora:
        return None
    model_spec_ = model_spec(config, platform="cpu")
    graphdef, abstract = abstract_model(model_spec_, AxisRules.from_config(config.mesh.rules))
    module = lora.abstract_module(graphdef, nnx.to_pure_dict(abstract))
    return LoraInfo(lora.find_targets(module, spec), spec.lora_dropout)


def build_partition(config: ml_collections.ConfigDict, spec: PeftSpec, info: LoraInfo | None, task: Task) -> Partition:
    seed = config.train.seed

    def apply(graphdef, params):
        extra = task.head(graphdef, params, seed) if task.head is not None else None
        return split_params(graphdef, params, spec, seed, extra)

    def runtime(rng) -> dict:
        return lora.dropout_leaves(info, rng) if info is not None and info.dropout > 0 else {}

    return Partition(
        apply=apply,
        loss_fn=lambda graphdef: task.loss_fn(graphdef, runtime, True),
        eval_loss_fn=lambda graphdef: task.loss_fn(graphdef, runtime, False),
        model_params=lambda trainable, frozen: full_tree(trainable, frozen, runtime(None)),
    )


def run_finetune(config: ml_collections.ConfigDict, workdir: str | Path, task: Task, *, overwrite: bool = False) -> dict:
    """Train, then write cost.json, merged/ (finetune.export_merged) and adapter/ + peft/ (LoRA)."""
    workdir = Path(workdir)
    config, stopped = stop_where_stopped(config, workdir)
    spec = peft_spec(config)
    info = lora_info(config, spec)
    partition = build_partition(config, spec, info, task)
    method = method_name(config)

    def on_finish(setup, state, frozen, summary) -> dict:
        extra = task.final_metrics(setup, state.params, frozen) if task.final_metrics is not None else {}
        report = cost_report(setup, state, frozen, {**from_metrics(workdir), **summary}, method)
        report.update(extra)
        if jax.process_index() == 0:
            write_cost(workdir, report)
        written = write_outputs(workdir, config, setup, state.params, frozen, spec, info, task.head_key, task.head_file,
                                task.head_outside_model)
        log.info(
            "%s: %d of %d parameters trained (%.2f%%), step %.3g FLOPs, peak %.0f MiB; outputs: %s",
            method, report["trainable_params"], report["total_params"], 100 * report["trainable_fraction"],
            report["step_flops"], report.get("peak_memory_bytes", 0) / 2**20, ", ".join(written) or "none",
        )
        return {"cost": str(workdir / "cost.json"), "outputs": written, **extra, **({"early_stopped": True} if stopped else {})}

    hooks = RunHooks(
        partition=partition,
        make_batches=task.make_batches,
        on_finish=on_finish,
        eval_at_start=True,
        on_start=task.on_start,
        next_batch=task.next_batch,
        evaluate=task.evaluate,
        progress_keys=task.progress_keys,
    )
    return run_training(config, workdir, overwrite=overwrite, hooks=hooks)
