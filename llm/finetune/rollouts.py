"""The rollout stage of online RL (`llm grpo`): the training loop's `next_batch`.

Each rollout: take prompts_per_step prompts (a seeded, resumable order), decode num_generations
completions of each from the current policy through `Generator` (LoRA adapters unmerged: the
sampler gets the very arrays the train step holds), cut them at EOS / stop strings, score them
with the rewards while the device computes the old and reference log-probs, turn rewards into
advantages, and hand the loop one minibatch per optimizer step (steps_per_generation slices,
num_iterations passes). The rollout RNG is fold(seed, step), and the prompt order and any
minibatches not yet trained on are the data state in the checkpoint, so a resumed run draws
exactly what an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from llm.errors import UserError
from llm.finetune.preference import adapters_off
from llm.finetune.recipe import full_tree
from llm.generate.generator import Generator
from llm.generate.sampling import SamplingOptions
from llm.rl.advantages import group_advantages
from llm.rl.completions import cut_completion, penalize_unfinished
from llm.rl.logprobs import token_logprobs
from llm.rl.prompts import PromptStream, encode_prompt, prompt_encoder, stop_strings, stop_token_sequences
from llm.rl.rewards import RewardRunner
from llm.rl.rollout_batch import rollout_rows, split_minibatches, token_values, trimmed_length
from llm.rl.tasks import RLTask, columns_of

log = logging.getLogger("llm")


def keeps_old_logps(config: ml_collections.ConfigDict) -> bool:
    """Whether the policy changes between a rollout and its last update (TRL computes the old
    log-probs only then; otherwise they equal the detached current ones)."""
    return int(config.rl.num_iterations) > 1 or int(config.rl.steps_per_generation) > 1


def has_reference(config: ml_collections.ConfigDict) -> bool:
    return float(config.rl.beta) > 0


def rollout_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The float32 (rows, length) arrays a rollout batch carries besides llm.data.batch's keys."""
    keys = ["advantages", "sampler_logps", "num_items"]
    if keeps_old_logps(config):
        keys.append("old_logps")
    if has_reference(config):
        keys.append("ref_logps")
    return tuple(keys)


def policy_logps(model, batch: dict, temperature: float) -> jax.Array:
    """(rows, length) log-probs of the targets at the sampling temperature."""
    hidden = model.hidden_states(batch["inputs"], batch["positions"], batch["segment_ids"])
    return token_logprobs(model, hidden, batch["targets"], temperature=temperature)


def rollout_seed(seed: int, step: int) -> int:
    return int(np.random.default_rng([int(seed), int(step)]).integers(0, 2**31 - 1))


@dataclasses.dataclass
class Rollout:
    """One rollout batch before it becomes updates: the rows, their cut completions, the
    training arrays (per-token values included), rewards (NaN = unscorable) and metrics."""

    step: int
    rows: list
    cut: list
    batch: dict
    rewards: np.ndarray
    metrics: dict
    advantages: np.ndarray | None = None  # per row, where the algorithm has them


class Rollouts:
    """The loop's batch source for GRPO / RLOO (and its data state)."""

    def __init__(self, config: ml_collections.ConfigDict, task: RLTask, runner: RewardRunner, tokenizer: Any,
                 workdir: Path, runtime: Any):
        rl = config.rl
        self.config, self.task, self.runner, self.tokenizer, self.workdir = config, task, runner, tokenizer, workdir
        self.runtime = runtime  # runtime(None): the LoRA-dropout leaves a LoRA graphdef merges with (rate 0)
        self.group = int(rl.num_generations)
        self.prompts_per_step = int(rl.prompts_per_step)
        self.temperature = float(rl.temperature)
        self.options = SamplingOptions(temperature=self.temperature, top_k=int(rl.top_k), top_p=float(rl.top_p))
        encoder = prompt_encoder(tokenizer, config)
        self.train_ids = [encode_prompt(encoder, config, row.prompt) for row in task.train]
        self.eval_rows = task.held_out[: int(rl.eval_prompts)]
        self.eval_ids = [encode_prompt(encoder, config, row.prompt) for row in self.eval_rows]
        self.stops = stop_strings(config)
        self.stop_sequences = stop_token_sequences(tokenizer, self.stops)
        self.eos = tokenizer.eos_id if config.data.add_eos else None
        self.stop_tokens = [self.eos] if self.eos is not None else []
        self.stream = PromptStream(len(task.train), int(config.data.seed))
        self.buffer: list[tuple[dict, dict]] = []
        self.served = 0
        self.keep_old = keeps_old_logps(config)
        self.lora = int(config.peft.lora_rank) > 0
        self.reference: Any = None  # full fine-tuning with beta > 0: the start weights (on_start)
        self.generator: Generator | None = None
        self._fns: dict = {}
        self._last_return: float | None = None

    # -- the loop's hooks ----------------------------------------------------------------------
    def on_start(self, setup, state, frozen) -> None:
        """Full fine-tuning with a KL term keeps the start weights as the reference (the only
        second copy, and only then); LoRA's reference is its own base with the adapters off."""
        if has_reference(self.config) and not self.lora:
            if int(jax.device_get(state.step)) == 0:
                self.reference = jax.tree_util.tree_map(jnp.copy, state.params)
            else:
                from llm.train.init_sources import init_params_hook

                full, _ = init_params_hook(self.config)(setup, setup.base_params)
                self.reference = setup.partition.apply(setup.base_graphdef, full)[1]

    def next_batch(self, setup, state, frozen) -> tuple[dict, dict]:
        jax.block_until_ready(state.params)  # the previous update is done: its time is train time
        now = time.perf_counter()
        train_time = now - self._last_return if self._last_return is not None else None
        if not self.buffer:
            self._rollout(setup, state, frozen)
        batch, metrics = self.buffer.pop(0)
        self.served += 1
        metrics = dict(metrics)
        if train_time is not None:
            metrics["train_time"] = train_time
        self._last_return = time.perf_counter()
        return batch, metrics

    def evaluate(self, setup, params, frozen) -> dict:
        """Greedy completions of the held-out prompts: mean reward and success rate."""
        if not self.eval_rows:
            raise UserError("the RL task has no held-out prompts; raise rl.held_out (or set data.eval_path)")
        generator = self._generator(setup, params, frozen)
        completions = generator.generate(
            self.eval_ids, max_new_tokens=int(self.config.rl.max_new_tokens), stop_tokens=self.stop_tokens,
            stop_sequences=self.stop_sequences, params=full_tree(params, frozen, self.runtime(None)),
        )
        cut = [cut_completion(self.tokenizer, c.tokens, self.stops, self.eos) for c in completions]
        texts = [c.text for c in cut]
        scores = self.runner.score([r.prompt for r in self.eval_rows], texts, columns_of(self.eval_rows))
        success = [self.task.success(t, r.columns) for t, r in zip(texts, self.eval_rows)]
        return {
            "eval_reward": float(np.nanmean(scores.total)) if np.isfinite(scores.total).any() else float("nan"),
            "eval_success": float(np.mean(success)),
            "eval_completion_length": float(np.mean([len(c.tokens) for c in cut])),
        }

    # -- data state ----------------------------------------------------------------------------
    def get_state(self) -> dict:
        """Prompt order position and, mid-rollout, the file holding the minibatches not yet trained on."""
        state = {"prompts": self.stream.get_state(), "served": self.served, "buffer": ""}
        if self.buffer:
            directory = self.workdir / "rollouts"
            directory.mkdir(exist_ok=True)
            path = directory / f"after_{self.served}.npz"
            arrays = {f"{j}/{k}": v for j, (batch, _) in enumerate(self.buffer) for k, v in batch.items()}
            np.savez(path, metrics=np.asarray(json.dumps([m for _, m in self.buffer])), **arrays)
            state["buffer"] = path.name
        return state

    def set_state(self, state: dict) -> None:
        self.stream.set_state(state["prompts"])
        self.served = int(state["served"])
        self.buffer = []
        if state.get("buffer"):
            path = self.workdir / "rollouts" / state["buffer"]
            if not path.is_file():
                raise UserError(f"{path} (the rollouts of the checkpoint being resumed) is missing; restore it or start again with --overwrite")
            stored = np.load(path)
            metrics = json.loads(str(stored["metrics"]))
            for j, m in enumerate(metrics):
                self.buffer.append(({k.split("/", 1)[1]: stored[k] for k in stored.files if k.startswith(f"{j}/")}, m))

    # -- the rollout ---------------------------------------------------------------------------
    def _generator(self, setup, params, frozen) -> Generator:
        if self.generator is None:
            pad = self.tokenizer.pad_id if getattr(self.tokenizer, "pad_id", None) is not None else 0
            self.generator = Generator(setup.graphdef, full_tree(params, frozen, self.runtime(None)), pad_id=pad,
                                       cast_to_compute=False, pack_for_cpu=False)
        return self.generator

    def _device_fns(self, setup):
        if not self._fns:
            graphdef, runtime, temperature = setup.graphdef, self.runtime, self.temperature

            def old(trainable, frozen, batch):
                return policy_logps(nnx.merge(graphdef, full_tree(trainable, frozen, runtime(None))), batch, temperature)

            def ref(trainable, frozen, reference, batch):
                weights = adapters_off(trainable) if reference is None else reference
                return policy_logps(nnx.merge(graphdef, full_tree(weights, frozen, runtime(None))), batch, temperature)

            self._fns = {"old": jax.jit(old), "ref": jax.jit(ref)}
        return self._fns

    def _rollout(self, setup, state, frozen) -> None:
        rollout = self.sample_and_score(setup, state, frozen)
        self.buffer = self.updates(rollout)
        self._write_samples(rollout)

    def sample_and_score(self, setup, state, frozen) -> Rollout:
        """Generate, cut, score; old / reference log-probs (and whatever `device_values` adds)
        computed on the device while the rewards run on the host."""
        rl, config = self.config.rl, self.config
        step = int(jax.device_get(state.step))
        index = self.stream.take(self.prompts_per_step)
        rows = [self.task.train[i] for i in index for _ in range(self.group)]
        prompt_ids = [self.train_ids[i] for i in index for _ in range(self.group)]
        generator = self._generator(setup, state.params, frozen)
        t0 = time.perf_counter()
        completions = generator.generate(
            prompt_ids, max_new_tokens=int(rl.max_new_tokens), options=self.options,
            stop_tokens=self.stop_tokens, stop_sequences=self.stop_sequences,
            seed=rollout_seed(config.train.seed, step), return_logprobs=True, logprobs_at_temperature=True,
            params=full_tree(state.params, frozen, self.runtime(None)),
        )
        rollout_time = time.perf_counter() - t0
        new_tokens = sum(len(c.tokens) for c in completions)
        cut = [cut_completion(self.tokenizer, c.tokens, self.stops, self.eos) for c in completions]
        batch = rollout_rows(prompt_ids, [c.tokens for c in cut], int(config.data.seq_len))
        seq_len = trimmed_length(batch["segment_ids"], int(config.data.seq_len), int(config.model.loss_chunk))
        batch = {k: v[:, :seq_len] for k, v in batch.items()}
        starts = [len(p) - 1 for p in prompt_ids]
        batch["sampler_logps"] = token_values(len(rows), seq_len, [c.logprobs[: len(k.tokens)] for c, k in zip(completions, cut)], starts)

        t1 = time.perf_counter()
        pending = self.device_values(setup, state, frozen, setup.shard_batch(batch))
        t2 = time.perf_counter()
        scores = self.runner.score([r.prompt for r in rows], [c.text for c in cut], columns_of(rows))
        reward_time = time.perf_counter() - t2
        t3 = time.perf_counter()
        for key, value in jax.device_get(pending).items():
            batch[key] = np.asarray(value, np.float32)
        reference_time = (t2 - t1) + (time.perf_counter() - t3)

        ended = np.asarray([c.ended for c in cut])
        rewards = penalize_unfinished(scores.total, ended, float(rl.missing_eos_penalty))
        metrics = self._metrics(rewards, scores, cut, ended, new_tokens, rollout_time, reward_time, reference_time, batch)
        return Rollout(step=step, rows=rows, cut=cut, batch=batch, rewards=rewards, metrics=metrics)

    def device_values(self, setup, state, frozen, device_batch) -> dict:
        """Dispatched (not awaited) per-token arrays of the rollout: old and reference log-probs."""
        fns, pending = self._device_fns(setup), {}
        if self.keep_old:
            pending["old_logps"] = fns["old"](state.params, frozen, device_batch)
        if has_reference(self.config):
            pending["ref_logps"] = fns["ref"](state.params, frozen, self.reference, device_batch)
        return pending

    def updates(self, rollout: Rollout) -> list[tuple[dict, dict]]:
        """GRPO / RLOO: group advantages, then the optimizer steps' minibatches (num_iterations
        passes over steps_per_generation slices, as TRL orders them)."""
        rl, batch = self.config.rl, rollout.batch
        advantages = np.asarray(group_advantages(jnp.asarray(rollout.rewards), self.group, estimator=str(rl.advantage),
                                                 scale=str(rl.scale_rewards), eps=float(rl.std_eps)))
        rollout.advantages = advantages
        batch["advantages"] = np.repeat(advantages[:, None], batch["inputs"].shape[1], axis=1).astype(np.float32)
        return self.passes(rollout)

    def passes(self, rollout: Rollout) -> list[tuple[dict, dict]]:
        rl = self.config.rl
        minibatches = split_minibatches(rollout.batch, int(rl.steps_per_generation))
        for mb in minibatches:  # dapo's normaliser: the completion tokens of the optimizer step's batch
            mb["num_items"] = np.full_like(mb["sampler_logps"], float(mb["loss_mask"].sum()))
        passes = [mb for _ in range(int(rl.num_iterations)) for mb in minibatches]
        metrics = dict(rollout.metrics)
        for key in ("rollout_time", "reward_time", "reference_time"):
            metrics[key] /= len(passes)  # per optimizer step
        metrics["rollout_tokens"] = metrics.pop("new_tokens") / len(passes)
        return [(mb, metrics) for mb in passes]

    def _metrics(self, rewards, scores, cut, ended, new_tokens, rollout_time, reward_time, reference_time, batch) -> dict:
        scored = np.isfinite(rewards)
        groups = rewards.reshape(-1, self.group)
        with np.errstate(all="ignore"):
            group_std = np.nanstd(groups, axis=1, ddof=1) if self.group > 1 else np.zeros(len(groups))
        out = {
            "reward": float(np.nanmean(rewards)) if scored.any() else float("nan"),
            "reward_std": float(np.nanmean(group_std)) if np.isfinite(group_std).any() else 0.0,
            "frac_reward_zero_std": float(np.mean(~(group_std > 1e-8))),
            "completions/mean_length": float(np.mean([len(c.tokens) for c in cut])),
            "completions/clipped_ratio": float(np.mean(~ended)),
            "rollout_time": rollout_time,
            "reward_time": reward_time,
            "reference_time": reference_time,
            "rollout_tokens_per_s": new_tokens / max(rollout_time, 1e-9),
            "new_tokens": float(new_tokens),
            "reward_failures": float(sum(scores.failures.values())),
            "unscored": float(np.mean(~scored)),
        }
        for name, values in scores.per_reward.items():
            out[f"rewards/{name}/mean"] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        if "old_logps" in batch:
            m = batch["loss_mask"] > 0
            out["sampler_logp_diff"] = float(np.mean(np.abs(batch["old_logps"][m] - batch["sampler_logps"][m])))
        return out

    def _write_samples(self, rollout: Rollout) -> None:
        every = int(self.config.rl.sample_every)
        if not every or rollout.step % every or jax.process_index() != 0:
            return
        with open(self.workdir / "samples.jsonl", "a", encoding="utf-8") as f:
            for i in range(min(int(self.config.rl.samples), len(rollout.rows))):
                reward = rollout.rewards[i]
                f.write(json.dumps({"step": rollout.step, "prompt": rollout.rows[i].prompt, "completion": rollout.cut[i].text,
                                    "reward": None if not np.isfinite(reward) else float(reward),
                                    "advantage": None if rollout.advantages is None else float(rollout.advantages[i])}) + "\n")
