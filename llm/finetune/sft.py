"""Instruction tuning: next-token loss on the assistant tokens of chat / prompt-response data
(llm.data.formats gives the loss mask, the pipeline packs examples with segment ids), over
whatever `config.peft` leaves trainable."""

from __future__ import annotations

from pathlib import Path

import ml_collections

from llm.config.validate import validate_config
from llm.errors import ConfigError
from llm.finetune.recipe import Runtime, Task, full_tree, run_finetune
from llm.train.loss import lm_loss_fn


def lm_task(z_loss: float = 0.0) -> Task:
    def build(graphdef, runtime: Runtime, train: bool):
        def loss_fn(trainable, frozen, batch, rng):
            extra = runtime(rng if train else None)
            return lm_loss_fn(graphdef, z_loss, combine=lambda t, f: full_tree(t, f, extra))(trainable, frozen, batch, rng)

        return loss_fn

    return Task(name="sft", loss_fn=build)


def check_sft_config(config: ml_collections.ConfigDict) -> None:
    validate_config(config)
    if config.finetune.task != "sft":
        raise ConfigError(f"finetune.task={config.finetune.task!r}; `llm sft` runs finetune.task=sft (use `llm classify` for classification)")
    if config.data.format != "sft":
        raise ConfigError(f"data.format={config.data.format!r}; instruction tuning reads data.format=sft (chat or prompt/response records)")


def run_sft(config: ml_collections.ConfigDict, workdir: str | Path, *, overwrite: bool = False) -> dict:
    check_sft_config(config)
    return run_finetune(config, workdir, lm_task(config.train.z_loss), overwrite=overwrite)
