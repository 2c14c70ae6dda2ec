"""Online RL with a learned critic (`llm ppo`): TRL 0.x PPOTrainer's algorithm on the one training
loop, fully or with LoRA / QLoRA, rewarded by a reward model (`llm rm`) and / or reward functions.

A rollout (llm.finetune.rollouts, subclassed here) decodes num_generations completions per prompt
and scores them; the device computes, from the same rollout rows, the policy's log-probs and
values (old_logps, old_values) and the reference log-probs (LoRA: the same base with the adapters
off; full fine-tuning: the start weights, kept only when rl.kl_coef > 0). Then per-token rewards
(-kl_coef * KL, + the score at the last completion token), GAE, whitened advantages and returns,
and num_ppo_epochs passes of steps_per_generation minibatches of the clipped policy + value loss.

The critic, by rl.value_model:
  head      a (d_model, 1) value head on the policy's final hidden states, trained next to the
            policy (with LoRA: next to the adapters), zero at the start; policy and value share
            the trunk. Written to merged/value_head.safetensors beside the policy.
  separate  a critic with its own weights (TRL PPO's default: a separate value model), under one
            key "critic" of the trainable tree: {"params": its weights, "value_head": the head}.
            With LoRA / QLoRA its weights are a second set of adapters over the SAME frozen base
            (no second base: its forward merges the graphdef with its adapters + the policy's
            frozen tree), drawn like LoRA's (A random, B = 0) from train.seed + 1. With full
            fine-tuning it is a trainable copy of the start weights (minus peft.freeze's leaves,
            which both share): a second model plus its AdamW moments, about 2x the trainable
            memory of "head" and a second forward / backward per step. It starts from the
            policy's start weights with a zero head, like "head". Written flattened ("params/...",
            "value_head/kernel") to merged/critic.safetensors.
Either way the critic is in the trainable tree, so the checkpoints (and a resumed run) hold it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from llm.data.batch import BATCH_DTYPES
from llm.errors import ConfigError
from llm.finetune.grpo import final_metrics, resolve_rl_config
from llm.finetune.recipe import Runtime, Task, full_tree, lora_info, run_finetune
from llm.finetune.rollouts import Rollout, Rollouts
from llm.peft import lora
from llm.peft.abstract import call, is_abstract
from llm.peft.lora import abstract_module
from llm.peft.spec import peft_spec
from llm.peft.split import freeze_mask, split_params
from llm.pytree import path_keys, path_str, set_path
from llm.rl.advantages import gae, masked_whiten
from llm.rl.logprobs import token_logprobs
from llm.rl.ppo_losses import ppo_loss, ppo_token_rewards, token_kl
from llm.rl.rollout_batch import split_minibatches

log = logging.getLogger("llm")

VALUE = "value_head"
VALUE_FILE = "value_head.safetensors"
CRITIC = "critic"  # rl.value_model="separate": the critic's subtree {"params": ..., VALUE: ...}
CRITIC_FILE = "critic.safetensors"
CRITIC_SEED = 1  # the critic's adapters are drawn from train.seed + CRITIC_SEED (the policy's: train.seed)
VALUE_MODELS = ("head", "separate")
# The float32 (rows, length) arrays a PPO minibatch carries besides llm.data.batch's keys.
PPO_KEYS = ("advantages", "returns", "old_values", "old_logps", "sampler_logps")


# -- the critic ---------------------------------------------------------------------------------
def _zero_head(module, abstract: bool) -> dict:
    """{"kernel": (d_model, 1) zeros}, replicated on the mesh. Zero, so the first values are 0
    and the first update's advantages are the whitened rewards-to-go."""
    d = module.spec.d_model
    mesh = module.rules.mesh
    sharding = NamedSharding(mesh, PartitionSpec()) if mesh is not None else None
    create = jax.jit(lambda: {"kernel": jnp.zeros((d, 1), jnp.float32)}, out_shardings=sharding)
    return call(create, abstract=abstract)


def init_value_head(config: ml_collections.ConfigDict):
    """Task.head of rl.value_model="head": {VALUE: zero kernel}."""

    def make(graphdef, params, seed: int) -> dict:
        return {VALUE: _zero_head(abstract_module(graphdef, params), is_abstract(params))}

    return make


def init_critic(config: ml_collections.ConfigDict):
    """Task.head of rl.value_model="separate": {CRITIC: {"params": weights, VALUE: zero kernel}}.
    LoRA: fresh adapters (train.seed + CRITIC_SEED) of the policy's targets, no base leaf; full
    fine-tuning: a copy of every leaf peft.freeze leaves trainable (the frozen ones are shared)."""
    spec = peft_spec(config)

    def make(graphdef, params, seed: int) -> dict:
        abstract = is_abstract(params)
        head = _zero_head(abstract_module(graphdef, params), abstract)
        if spec.lora:
            weights = lora.unmerge(lora.add_lora(graphdef, params, spec, seed + CRITIC_SEED)[1])[1]
        else:
            mask, weights = freeze_mask(params, spec.freeze), {}
            for path, leaf in jax.tree_util.tree_leaves_with_path(params):
                if not mask[path_str(path)]:
                    set_path(weights, path_keys(path), leaf if abstract else jnp.copy(leaf))
        return {CRITIC: {"params": weights, VALUE: head}}

    return make


def critic_task_fields(config: ml_collections.ConfigDict) -> dict:
    """Task(head=, head_key=, head_file=) of the config's rl.value_model."""
    if config.rl.value_model == "separate":
        return dict(head=init_critic(config), head_key=CRITIC, head_file=CRITIC_FILE)
    return dict(head=init_value_head(config), head_key=VALUE, head_file=VALUE_FILE)


def split_value(trainable: dict) -> tuple[dict, dict]:
    """(the policy's trainable tree, the critic: {VALUE: head} or {"params": ..., VALUE: head})
    of a PPO run's trainable tree."""
    policy = dict(trainable)
    if CRITIC in policy:
        return policy, policy.pop(CRITIC)
    return policy, {VALUE: policy.pop(VALUE)}


def token_values(hidden: jax.Array, head: dict) -> jax.Array:
    """(rows, length) f32 values: each position's final hidden state times the head's kernel, so
    values[:, t] is V of the state that predicts targets[:, t] (aligned with the log-probs)."""
    return jnp.einsum("btd,d->bt", hidden.astype(jnp.float32), head["kernel"][:, 0].astype(jnp.float32))


def policy_logps_and_values(graphdef, policy: dict, critic: dict, frozen: Any, extra: dict, critic_extra: dict,
                            batch: dict, temperature: float) -> tuple[jax.Array, jax.Array]:
    """The policy's log-probs and the critic's values of a batch. A head reads the policy's hidden
    states; a separate critic runs its own forward over ITS weights + the same frozen tree."""
    model = nnx.merge(graphdef, full_tree(policy, frozen, extra))
    hidden = model.hidden_states(batch["inputs"], batch["positions"], batch["segment_ids"])
    logps = token_logprobs(model, hidden, batch["targets"], temperature=temperature)
    if "params" in critic:
        critic_model = nnx.merge(graphdef, full_tree(critic["params"], frozen, critic_extra))
        hidden = critic_model.hidden_states(batch["inputs"], batch["positions"], batch["segment_ids"])
    return logps, token_values(hidden, critic[VALUE])


# -- advantages ---------------------------------------------------------------------------------
def ppo_advantages(scores: jax.Array, logps: jax.Array, ref_logps: jax.Array, values: jax.Array, mask: jax.Array, *,
                   kl_coef: float, kl_estimator: str, gamma: float, lam: float, whiten_rewards: bool) -> dict[str, jax.Array]:
    """TRL 0.x PPOTrainer's steps 4-6 on one rollout batch: per-token rewards (-kl_coef * KL, +
    the score at each row's last completion token), optional reward whitening (shift_mean=False),
    GAE over the rollout's values, advantages whitened over the batch; padding is 0 everywhere.
    Returns {"rewards", "advantages", "returns", "kl"} (rows, length) f32."""
    m = jnp.asarray(mask) > 0
    rewards = ppo_token_rewards(scores, logps, ref_logps, m, kl_coef, kl_estimator)
    if whiten_rewards:
        rewards = jnp.where(m, masked_whiten(rewards, m, shift_mean=False), 0.0)
    advantages, returns = gae(rewards, values, m, gamma, lam)
    advantages = jnp.where(m, masked_whiten(advantages, m), 0.0)
    kl = jnp.where(m, token_kl(jnp.where(m, logps, 0.0), jnp.where(m, ref_logps, 0.0), kl_estimator), 0.0)
    return {"rewards": rewards, "advantages": advantages, "returns": returns, "kl": kl}


# -- the loss -----------------------------------------------------------------------------------
def ppo_loss_builder(config: ml_collections.ConfigDict):
    """(graphdef, runtime, train) -> loss_fn(trainable, frozen, batch, rng), the Task contract.
    "tokens" counts rows, so the logged loss is TRL's per-minibatch pg + vf_coef * vf loss."""
    rl = config.rl
    temperature = float(rl.temperature)
    constants = dict(cliprange=float(rl.epsilon_low), cliprange_value=float(rl.cliprange_value), vf_coef=float(rl.vf_coef),
                     log_ratio_clip=float(rl.log_ratio_clip))

    def build(graphdef, runtime: Runtime, train: bool):
        def loss_fn(trainable, frozen, batch, rng):
            policy, critic = split_value(trainable)
            extra = runtime(rng if train else None)
            critic_extra = runtime(jax.random.fold_in(rng, 1)) if train and rng is not None else extra  # own dropout
            logps, values = policy_logps_and_values(graphdef, policy, critic, frozen, extra, critic_extra, batch, temperature)
            mask = batch["loss_mask"].astype(jnp.float32)
            loss, metrics = ppo_loss(logps, batch["old_logps"], batch["advantages"], mask, values, batch["old_values"],
                                     batch["returns"], **constants)
            tokens = jnp.maximum(jnp.sum(mask), 1.0)
            metrics["sampler_logp_diff"] = jnp.sum(jnp.abs(batch["old_logps"] - batch["sampler_logps"]) * mask) / tokens
            n = jnp.asarray(mask.shape[0], jnp.float32)
            aux = {"tokens": n, **{f"{k}_sum": jax.lax.stop_gradient(v) * n for k, v in metrics.items()}}
            return loss * n, aux

        return loss_fn

    return build


# -- rollouts -----------------------------------------------------------------------------------
class PPORollouts(Rollouts):
    """GRPO's rollout stage with a critic: old log-probs, values and reference log-probs from the
    device, then TRL PPO's advantages and num_ppo_epochs passes of shuffled minibatches."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.keep_old = True
        self.needs_reference = float(self.config.rl.kl_coef) > 0
        self._value: dict | None = None  # the value head of the step being rolled out
        self._ppo_fns: dict = {}

    def on_start(self, setup, state, frozen) -> None:
        """Full fine-tuning keeps the start policy as the reference (when kl_coef > 0); LoRA's
        reference is its own base with the adapters off."""
        if self.lora or not self.needs_reference:
            return
        if int(jax.device_get(state.step)) == 0:
            self.reference = jax.tree_util.tree_map(jnp.copy, split_value(state.params)[0])
        else:  # the policy's part of the partition only (not partition.apply: no critic copy to discard)
            from llm.train.init_sources import init_params_hook

            full, _ = init_params_hook(self.config)(setup, setup.base_params)
            self.reference = split_params(setup.base_graphdef, full, peft_spec(self.config), int(self.config.train.seed))[1]

    def sample_and_score(self, setup, state, frozen) -> Rollout:
        """The base rollout on the policy's part of the trainable tree (the sampler's model has no
        value head or critic); the critic waits in self._value for device_values."""
        policy, self._value = split_value(state.params)
        return super().sample_and_score(setup, state._replace(params=policy), frozen)

    def evaluate(self, setup, params, frozen) -> dict:
        return super().evaluate(setup, split_value(params)[0], frozen)

    def device_values(self, setup, state, frozen, device_batch) -> dict:
        policy = state.params  # sample_and_score passes the policy's part; the critic is self._value
        if not self._ppo_fns:
            graphdef, runtime, temperature = setup.graphdef, self.runtime, self.temperature

            def old(policy, critic, frozen, batch):
                extra = runtime(None)
                return policy_logps_and_values(graphdef, policy, critic, frozen, extra, extra, batch, temperature)

            self._ppo_fns["old"] = jax.jit(old)
        logps, values = self._ppo_fns["old"](policy, self._value, frozen, device_batch)
        pending = {"old_logps": logps, "old_values": values}
        if self.needs_reference:
            pending["ref_logps"] = self._device_fns(setup)["ref"](policy, frozen, self.reference, device_batch)
        return pending

    def updates(self, rollout: Rollout) -> list[tuple[dict, dict]]:
        """Per-token rewards, GAE, whitening (`ppo_advantages`); an unscorable row (every reward
        None) is left out of the update (its loss mask is zeroed)."""
        rl, batch = self.config.rl, rollout.batch
        scored = np.isfinite(rollout.rewards)
        batch["loss_mask"] = (batch["loss_mask"] * scored[:, None]).astype(batch["loss_mask"].dtype)
        scores = np.where(scored, rollout.rewards, 0.0).astype(np.float32)
        ref = batch.pop("ref_logps", batch["old_logps"])
        out = jax.device_get(ppo_advantages(
            jnp.asarray(scores), jnp.asarray(batch["old_logps"]), jnp.asarray(ref), jnp.asarray(batch["old_values"]),
            jnp.asarray(batch["loss_mask"]), kl_coef=float(rl.kl_coef), kl_estimator=str(rl.kl_estimator),
            gamma=float(rl.gamma), lam=float(rl.lam), whiten_rewards=bool(rl.whiten_rewards),
        ))
        batch["advantages"] = np.asarray(out["advantages"], np.float32)
        batch["returns"] = np.asarray(out["returns"], np.float32)
        kl = np.asarray(out["kl"]).sum(axis=1)
        non_score = -float(rl.kl_coef) * kl
        rollout.metrics.update({
            "objective/kl": float(kl.mean()),
            "objective/non_score_reward": float(non_score.mean()),
            "objective/scores": float(scores[scored].mean()) if scored.any() else float("nan"),
            "objective/rlhf_reward": float((scores + non_score)[scored].mean()) if scored.any() else float("nan"),
            "val/mean": float(batch["old_values"][batch["loss_mask"] > 0].mean()) if batch["loss_mask"].any() else 0.0,
        })
        return self.ppo_passes(rollout)

    def ppo_passes(self, rollout: Rollout) -> list[tuple[dict, dict]]:
        """num_ppo_epochs passes, each over the rollout's rows in a fresh order from (seed, step,
        epoch) (TRL shuffles per epoch), cut into steps_per_generation minibatches."""
        rl, batch = self.config.rl, rollout.batch
        rows = len(batch["inputs"])
        passes = []
        for epoch in range(int(rl.num_ppo_epochs)):
            order = np.random.default_rng([int(self.config.train.seed), rollout.step, epoch]).permutation(rows)
            shuffled = {k: batch[k][order] for k in (*BATCH_DTYPES, *PPO_KEYS)}
            passes += split_minibatches(shuffled, int(rl.steps_per_generation))
        metrics = dict(rollout.metrics)
        for key in ("rollout_time", "reward_time", "reference_time"):
            metrics[key] /= len(passes)  # per optimizer step
        metrics["rollout_tokens"] = metrics.pop("new_tokens") / len(passes)
        return [(mb, metrics) for mb in passes]


# -- the run ------------------------------------------------------------------------------------
def check_ppo_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config `llm ppo` trains with (batch shape derived from config.rl), or a ConfigError."""
    rl = config.rl
    if config.finetune.task != "ppo":
        raise ConfigError(f"finetune.task={config.finetune.task!r}; `llm ppo` runs finetune.task=ppo")
    if not rl.reward_model and not list(rl.rewards):
        raise ConfigError("llm ppo has no reward: pass --reward-model RM (an `llm rm` workdir) or set rl.rewards "
                          "(builtin:NAME, MODULE:FUNCTION or a reward model workdir)")
    if rl.value_model not in VALUE_MODELS:
        raise ConfigError(f"rl.value_model={rl.value_model!r}; use one of {', '.join(VALUE_MODELS)}")
    if int(rl.num_ppo_epochs) < 1:
        raise ConfigError(f"rl.num_ppo_epochs={rl.num_ppo_epochs} must be >= 1 (TRL PPO 4)")
    if int(rl.num_iterations) != 1:
        raise ConfigError(f"rl.num_iterations={rl.num_iterations} is GRPO's; PPO's passes over a rollout are "
                          "rl.num_ppo_epochs: leave rl.num_iterations at 1")
    for name in ("gamma", "lam"):
        if not 0.0 <= float(rl[name]) <= 1.0:
            raise ConfigError(f"rl.{name}={rl[name]} must be in [0, 1] (TRL PPO: gamma 1.0, lam 0.95)")
    for name in ("kl_coef", "cliprange_value", "vf_coef"):
        if not (np.isfinite(float(rl[name])) and float(rl[name]) >= 0):
            raise ConfigError(f"rl.{name}={rl[name]} must be a finite number >= 0 (TRL PPO: kl_coef 0.05, cliprange_value 0.2, vf_coef 0.1)")
    return resolve_rl_config(config)


def ppo_task(config: ml_collections.ConfigDict, workdir: Path) -> Task:
    from llm.data.tokenizer import load_tokenizer
    from llm.rl.rewards import RewardRunner, parse_rewards, reward_model_reward
    from llm.rl.tasks import build_task

    tokenizer = load_tokenizer(config.data.tokenizer)
    task = build_task(config)
    entries = list(config.rl.rewards)  # empty: only the reward model (not the task's default rewards)
    specs = parse_rewards(entries, task, policy_tokenizer_fingerprint=tokenizer.fingerprint) if entries else []
    if config.rl.reward_model:
        specs.append(reward_model_reward(config.rl.reward_model, tokenizer.fingerprint, weight=float(config.rl.reward_model_weight)))
    runner = RewardRunner(specs, workers=int(config.rl.reward_workers), max_failure_rate=float(config.rl.max_reward_failure_rate))
    info = lora_info(config, peft_spec(config))
    runtime = (lambda rng: lora.dropout_leaves(info, rng)) if info is not None and info.dropout > 0 else (lambda rng: {})
    source = PPORollouts(config, task, runner, tokenizer, workdir, runtime)
    rl = config.rl
    log.info(
        "ppo: task %s (%d train / %d held-out prompts), rewards %s, %d prompts x %d completions per rollout, "
        "%d epochs x %d minibatches, kl_coef %g, value model %s",
        task.name, len(task.train), len(task.held_out), ", ".join(f"{s.name}@{s.weight:g}" for s in specs),
        rl.prompts_per_step, rl.num_generations, rl.num_ppo_epochs, rl.steps_per_generation, rl.kl_coef, rl.value_model,
    )
    return Task(
        name="ppo",
        loss_fn=ppo_loss_builder(config),
        **critic_task_fields(config),
        head_outside_model=True,  # the critic is no part of the policy: peft/ holds the policy's adapters
        make_batches=lambda *_: source,
        on_start=source.on_start,
        next_batch=source.next_batch,
        evaluate=source.evaluate,
        final_metrics=final_metrics(source, workdir),
        progress_keys=("reward", "objective/kl", "policy/clipfrac_avg", "loss/value_avg", "rollout_time", "train_time"),
    )


def run_ppo(config: ml_collections.ConfigDict, workdir: str | Path, *, overwrite: bool = False) -> dict:
    config = check_ppo_config(config)
    workdir = Path(workdir)
    return run_finetune(config, workdir, ppo_task(config, workdir), overwrite=overwrite)
