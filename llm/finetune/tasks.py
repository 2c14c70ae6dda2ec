"""The fine-tuning step a config trains, from the config alone: its task (loss and head) and
the trainable/frozen partition `llm sft` / `llm classify` build for it.

`llm compile` uses this to compile the real fine-tuning step of a config without reading its
data: classification needs its number of labels, which `finetune.num_labels` or the built-in
corpus's manifest gives (reading and tokenizing the records is left to `llm classify`).
"""

from __future__ import annotations

import ml_collections

from llm.errors import UserError
from llm.finetune.classify import HEAD, classification_loss, init_head, label_names
from llm.finetune.recipe import Task, build_partition, lora_info
from llm.finetune.sft import lm_task
from llm.peft.spec import peft_spec
from llm.train.partition import Partition


def is_partitioned(config: ml_collections.ConfigDict) -> bool:
    """Whether the step differs from plain training: LoRA / QLoRA adapters over a frozen base,
    frozen parameters (peft.freeze), or a classification head and loss. (Full SFT trains every
    parameter with the same next-token loss as `llm train`.)"""
    p = config.peft
    return p.lora_rank > 0 or bool(p.freeze) or config.finetune.task in ("classification", "reward", "dpo", "grpo", "ppo")


def classification_labels(config: ml_collections.ConfigDict) -> int:
    """finetune.num_labels, else the labels of the manifest data.path points at."""
    if config.finetune.num_labels:
        return int(config.finetune.num_labels)
    names = label_names(config)
    if names:
        return len(names)
    raise UserError(
        "finetune.task=classification: the number of labels comes from the data; set finetune.num_labels "
        "(or point data.path at an `llm data builtin` manifest.json)"
    )


def task_for_config(config: ml_collections.ConfigDict) -> Task:
    """The task's loss and head as `llm sft` / `llm classify` build them (no data batches)."""
    if config.finetune.task == "classification":
        n_labels = classification_labels(config)
        return Task(name="classification", loss_fn=classification_loss(n_labels), head=init_head(n_labels), head_key=HEAD)
    if config.finetune.task == "reward":
        from llm.finetune.reward import HEAD as RM_HEAD, init_reward_head, reward_loss_builder

        return Task(name="reward", loss_fn=reward_loss_builder(config), head=init_reward_head(config), head_key=RM_HEAD)
    if config.finetune.task == "dpo":
        from llm.finetune.preference import dpo_loss_builder

        return Task(name="dpo", loss_fn=dpo_loss_builder(config))
    if config.finetune.task == "grpo":
        from llm.finetune.grpo import grpo_loss_builder

        return Task(name="grpo", loss_fn=grpo_loss_builder(config))
    if config.finetune.task == "ppo":
        from llm.finetune.ppo import critic_task_fields, ppo_loss_builder

        return Task(name="ppo", loss_fn=ppo_loss_builder(config), **critic_task_fields(config))
    return lm_task(config.train.z_loss)


def extra_batch_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """(rows, seq_len) float32 arrays the task's batches carry besides llm.data.batch's keys."""
    if config.finetune.task == "dpo":
        from llm.finetune.preference import resolve_reference

        return ("ref_logps",) if resolve_reference(config) == "precompute" else ()
    if config.finetune.task == "grpo":
        from llm.finetune.rollouts import rollout_keys

        return rollout_keys(config)
    if config.finetune.task == "ppo":
        from llm.finetune.ppo import PPO_KEYS

        return PPO_KEYS
    if config.finetune.task == "reward" and config.rm.margin_field:
        return ("margin",)
    return ()


def partition_for_config(config: ml_collections.ConfigDict) -> Partition:
    """The partition `llm.finetune.recipe.run_finetune` trains with for this config."""
    spec = peft_spec(config)
    return build_partition(config, spec, lora_info(config, spec), task_for_config(config))
