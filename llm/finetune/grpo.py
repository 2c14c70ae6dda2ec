"""Online RL with group baselines (`llm grpo`): GRPO, DAPO, Dr. GRPO, GSPO and RLOO on the one
training loop, fully or with LoRA / QLoRA.

A step: the rollout stage (llm.finetune.rollouts) decodes G completions per prompt from the
current weights and scores them; the train step recomputes their log-probs at the sampling
temperature and applies the clipped policy loss (llm.rl.grpo_losses). Nothing holds a second
model: with LoRA the sampler, the reference (adapters off) and the train step all read the same
frozen base arrays; with full fine-tuning the start weights are kept as the reference only
when rl.beta > 0.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from llm.config.base import base_config
from llm.errors import ConfigError
from llm.finetune.start import copy_config
from llm.finetune.recipe import Runtime, Task, full_tree, lora_info, run_finetune
from llm.finetune.rollouts import Rollouts, keeps_old_logps, policy_logps
from llm.peft import lora
from llm.peft.spec import peft_spec
from llm.rl.grpo_losses import PolicyLoss, policy_loss
from llm.train.metrics import plot_metric

log = logging.getLogger("llm")


def rollout_seq_len(config: ml_collections.ConfigDict) -> int:
    """The train step's row length: the longest prompt + completion (minus the final target),
    rounded up to a multiple of 8 (and of model.loss_chunk when set)."""
    n = int(config.rl.max_prompt_tokens) + int(config.rl.max_new_tokens) - 1
    multiple = 8
    chunk = int(config.model.loss_chunk)
    if chunk:
        multiple = multiple * chunk // math.gcd(multiple, chunk)
    return -(-n // multiple) * multiple


def resolve_rl_config(config: ml_collections.ConfigDict, need_start: bool = True) -> ml_collections.ConfigDict:
    """The run's batch shape from config.rl (data.batch_size and data.seq_len are derived, not
    set), checked before anything is built. need_start=False: for `llm compile`, which needs
    the step's shapes, not the start weights."""
    rl = config.rl
    for name in ("prompts_per_step", "num_generations", "steps_per_generation", "num_iterations", "max_new_tokens", "max_prompt_tokens"):
        if int(rl[name]) < 1:
            raise ConfigError(f"rl.{name}={rl[name]} must be >= 1")
    if int(rl.num_generations) < 2 and config.finetune.task == "grpo":
        raise ConfigError(f"rl.num_generations={rl.num_generations}: GRPO compares each completion with the others of its prompt; use 2 or more (TRL's default is 8)")
    rows = int(rl.prompts_per_step) * int(rl.num_generations)
    if rows % int(rl.steps_per_generation):
        raise ConfigError(f"rl.prompts_per_step * rl.num_generations = {rows} sequences do not split into rl.steps_per_generation={rl.steps_per_generation} equal minibatches")
    context = int(config.model.max_seq_len)
    longest = int(rl.max_prompt_tokens) + int(rl.max_new_tokens)
    if longest > context:
        raise ConfigError(
            f"rl.max_prompt_tokens + rl.max_new_tokens = {longest} exceeds the model's {context} positions "
            f"(model.max_seq_len); lower rl.max_new_tokens to <= {context - int(rl.max_prompt_tokens)}"
        )
    if not (0.0 < float(rl.temperature)):
        raise ConfigError(f"rl.temperature={rl.temperature} must be > 0: rollouts sample (TRL's default is 1.0)")
    if need_start and not config.checkpoint.init_from and not config.checkpoint.init_from_hf:
        raise ConfigError("online RL starts from a trained policy; pass --init-from (an `llm sft` / `llm train` workdir or export, or a Hugging Face directory)")
    if jax.process_count() > 1:
        raise ConfigError("llm grpo runs its rollouts on one host (any number of local devices); multi-host rollouts are not built")
    PolicyLoss.from_config(rl)  # every loss constant checked here
    derived = {"batch_size": rows // int(rl.steps_per_generation), "seq_len": rollout_seq_len(config)}
    default = base_config().data
    for name, value in derived.items():
        if config.data[name] not in (default[name], value):
            raise ConfigError(
                f"data.{name}={config.data[name]} but online RL derives it from config.rl ({value}); unset data.{name}"
            )
    out = copy_config(config)
    out.data.batch_size, out.data.seq_len = derived["batch_size"], derived["seq_len"]
    return out


def grpo_loss_builder(config: ml_collections.ConfigDict):
    """(graphdef, runtime, train) -> loss_fn(trainable, frozen, batch, rng), the Task contract.
    "tokens" counts rows, so the logged loss is TRL's per-batch policy loss."""
    spec = PolicyLoss.from_config(config.rl)
    temperature = float(config.rl.temperature)
    keep_old = keeps_old_logps(config)

    def build(graphdef, runtime: Runtime, train: bool):
        def loss_fn(trainable, frozen, batch, rng):
            policy = nnx.merge(graphdef, full_tree(trainable, frozen, runtime(rng if train else None)))
            logps = policy_logps(policy, batch, temperature)
            mask = batch["loss_mask"].astype(jnp.float32)
            old = batch["old_logps"] if keep_old else jax.lax.stop_gradient(logps)
            loss, metrics = policy_loss(
                spec, logps, old, batch["advantages"][:, 0], mask,
                ref_logps=batch.get("ref_logps"), num_items=batch["num_items"][0, 0],
            )
            tokens = jnp.maximum(jnp.sum(mask), 1.0)
            metrics["sampler_logp_diff"] = jnp.sum(jnp.abs(old - batch["sampler_logps"]) * mask) / tokens
            n = jnp.asarray(mask.shape[0], jnp.float32)
            aux = {"tokens": n, **{f"{k}_sum": jax.lax.stop_gradient(v) * n for k, v in metrics.items()}}
            return loss * n, aux

        return loss_fn

    return build


def grpo_task(config: ml_collections.ConfigDict, workdir: Path) -> Task:
    from llm.data.tokenizer import load_tokenizer
    from llm.rl.rewards import RewardRunner, parse_rewards, reward_model_reward
    from llm.rl.tasks import build_task

    tokenizer = load_tokenizer(config.data.tokenizer)
    task = build_task(config)
    specs = parse_rewards(list(config.rl.rewards), task)
    if config.rl.reward_model:
        model_reward = reward_model_reward(config.rl.reward_model, tokenizer.fingerprint)
        specs.append(dataclasses.replace(model_reward, weight=float(config.rl.reward_model_weight)))
    runner = RewardRunner(specs, workers=int(config.rl.reward_workers), max_failure_rate=float(config.rl.max_reward_failure_rate))
    info = lora_info(config, peft_spec(config))
    runtime = (lambda rng: lora.dropout_leaves(info, rng)) if info is not None and info.dropout > 0 else (lambda rng: {})
    source = Rollouts(config, task, runner, tokenizer, workdir, runtime)
    log.info(
        "%s: task %s (%d train / %d held-out prompts), rewards %s, %d prompts x %d completions per rollout, loss_agg %s, beta %g",
        config.finetune.task, task.name, len(task.train), len(task.held_out), ", ".join(f"{s.name}@{s.weight:g}" for s in specs),
        config.rl.prompts_per_step, config.rl.num_generations, config.rl.loss_agg, config.rl.beta,
    )
    return Task(
        name="grpo",
        loss_fn=grpo_loss_builder(config),
        make_batches=lambda *_: source,
        on_start=source.on_start,
        next_batch=source.next_batch,
        evaluate=source.evaluate,
        final_metrics=final_metrics(source, workdir),
        progress_keys=PROGRESS_KEYS,
    )


PROGRESS_KEYS = ("reward", "reward_std", "kl", "clip_ratio/region_mean", "rollout_time", "train_time")


def final_metrics(source: Rollouts, workdir: Path):
    """The held-out rewards of the final policy (summary.json / cost.json) and the reward curve."""

    def final(setup, trainable, frozen) -> dict:
        out = {f"heldout_{k[len('eval_'):]}": v for k, v in source.evaluate(setup, trainable, frozen).items()}
        source.runner.close()
        if jax.process_index() == 0 and (workdir / "metrics.jsonl").is_file():
            plot_metric(workdir / "metrics.jsonl", workdir / "reward.png", "reward", "mean reward")
        return out

    return final


def check_grpo_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config `llm grpo` trains with (batch shape derived from config.rl), or a ConfigError."""
    if config.finetune.task != "grpo":
        raise ConfigError(f"finetune.task={config.finetune.task!r}; `llm grpo` runs finetune.task=grpo")
    return resolve_rl_config(config)


def run_grpo(config: ml_collections.ConfigDict, workdir: str | Path, *, overwrite: bool = False) -> dict:
    config = check_grpo_config(config)
    workdir = Path(workdir)
    task = grpo_task(config, workdir)
    return run_finetune(config, workdir, task, overwrite=overwrite)
