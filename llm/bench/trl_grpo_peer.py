"""The TRL side of `llm bench grpo`: trl.GRPOTrainer on PyTorch CPU (transformers `generate` for
the rollouts), from a local Hugging Face model directory, offline, with each optimizer step broken
down the way our GRPO logs its own.

TRL 1.16 times its stages only for wandb / mlflow / trackio (`profiling_context`), so the trainer's
own methods are wrapped here instead: `_generate_single_turn` (the rollout: transformers
`generate` with the KV cache; its new tokens counted up to and including EOS, as TRL keeps them),
`_calculate_rewards` (the reward functions), `_get_per_token_logps_and_entropies` while a rollout
batch is being scored (old / reference log-prob forwards; none when beta = 0 and each batch is
trained once, as in TRL) and `_generate_and_score_completions` (all of that). Whatever else the
step took (forward + backward on prompt + completion, the optimizer) is the train time; its real
tokens are the prompt and completion tokens `_compute_loss` got (padding excluded).

The settings are llm.bench.trl_peer's deterministic ones (constant learning rate, no warmup, no
weight decay, no clipping, no dropout); prompts are taken in the given order (shuffle_dataset=
False), each repeated num_generations times, as TRL's RepeatSampler does. Run it through
`llm.bench.trl_peer.run_in_subprocess("grpo", ...)`: a fresh process with TRL alone in it.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

from llm.bench.trl_peer import lora_config, offline, peak_rss_bytes, timing_callback, training_args
from llm.errors import UserError
from llm.rl.rewards.spec import import_reward

STAGES = ("rollout_time", "reference_time", "reward_time", "score_time")


def importable(fn: Callable) -> str:
    """"module:name" of a top-level function, checked to import back to the same object (the
    TRL peer runs in another process and imports its rewards by name)."""
    name = f"{getattr(fn, '__module__', '')}:{getattr(fn, '__qualname__', '')}"
    try:
        same = import_reward(name, name) is fn
    except UserError:
        same = False
    if not same:
        raise UserError(f"reward {fn!r} is not a top-level function another process can import ({name}); "
                        "the TRL peer takes module:function rewards (a reward model is not mapped)")
    return name


def trl_reward(name: str, columns: Sequence[str]) -> Callable:
    """Our reward signature fn(prompts, completions, **columns) -> list[float | None] as a TRL
    reward function (TRL also passes completion_ids, trainer_state, log_extra, ...: dropped)."""
    fn = import_reward(name, name)

    def reward(prompts, completions, **kwargs):
        scores = fn(prompts=list(prompts), completions=list(completions), **{k: kwargs[k] for k in columns})
        return [None if s is None else float(s) for s in scores]

    reward.__name__ = name.rpartition(":")[2]
    return reward


class StepClock:
    """Wraps the trainer's stage methods (module docstring) and keeps one breakdown per optimizer
    step: seconds per stage, new tokens generated, and the real tokens the step trained on."""

    def __init__(self, trainer) -> None:
        self.steps: list[dict] = []
        self._current: dict[str, float] = defaultdict(float)
        self._scoring = False
        self._last_end: float | None = None
        self._wrap(trainer, "_generate_and_score_completions", self._score)
        self._wrap(trainer, "_generate_single_turn", self._rollout)
        self._wrap(trainer, "_calculate_rewards", lambda f, *a, **k: self._timed("reward_time", f, *a, **k))
        self._wrap(trainer, "_get_per_token_logps_and_entropies", self._logps)
        self._wrap(trainer, "_compute_loss", self._loss)

    @staticmethod
    def _wrap(trainer, name: str, around: Callable) -> None:
        inner = getattr(trainer, name)
        setattr(trainer, name, lambda *a, **k: around(inner, *a, **k))

    def _timed(self, key: str, fn: Callable, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self._current[key] += time.perf_counter() - start
        return out

    def _score(self, fn: Callable, *args, **kwargs):
        self._scoring = True
        try:
            out = self._timed("score_time", fn, *args, **kwargs)
        finally:
            self._scoring = False
        return out

    def _loss(self, fn: Callable, model, inputs, *args, **kwargs):
        self._current["train_tokens"] += float(inputs["prompt_mask"].sum() + inputs["completion_mask"].sum())
        return fn(model, inputs, *args, **kwargs)

    def _rollout(self, fn: Callable, *args, **kwargs):
        completion_ids, logprobs = self._timed("rollout_time", fn, *args, **kwargs)
        self._current["rollout_tokens"] += sum(len(ids) for ids in completion_ids)
        return completion_ids, logprobs

    def _logps(self, fn: Callable, *args, **kwargs):
        if self._scoring:  # old / reference log-probs of the rollout batch (no grad)
            return self._timed("reference_time", fn, *args, **kwargs)
        return fn(*args, **kwargs)

    def start(self) -> None:
        self._last_end = time.perf_counter()

    def end_step(self) -> None:
        now = time.perf_counter()
        row = {key: self._current.get(key, 0.0) for key in (*STAGES, "rollout_tokens", "train_tokens")}
        row["step_time"] = now - self._last_end
        row["train_time"] = row["step_time"] - row["score_time"]
        self.steps.append(row)
        self._current = defaultdict(float)
        self._last_end = now


def stage_means(rows: Sequence[dict]) -> dict:
    """Steps/s, the mean step time and the mean of each rollout stage over timed step rows (ours
    from metrics.jsonl, TRL's from the breakdown): one definition for both sides."""
    total = lambda key: sum(float(row.get(key) or 0.0) for row in rows)  # noqa: E731
    n = len(rows)
    out = {"timed_steps": n, "step_time": total("step_time") / n, "steps_per_s": n / total("step_time")}
    out.update({key: total(key) / n for key in ("rollout_time", "reference_time", "reward_time", "rollout_tokens")})
    out["rollout_tokens_per_s"] = total("rollout_tokens") / total("rollout_time") if total("rollout_time") else None
    return out


def summarize(breakdown: Sequence[dict], warmup: int) -> dict:
    """Steps/s and the stage figures over the steps after the first `warmup` ones."""
    timed = list(breakdown[warmup:])
    if not timed:
        return {}
    out = stage_means(timed)
    train_time, train_tokens = (sum(row[key] for row in timed) for key in ("train_time", "train_tokens"))
    out.update(train_time=train_time / len(timed), train_tokens=train_tokens / len(timed),
               train_tokens_per_s=train_tokens / train_time if train_time > 0 else None)
    return out


def trl_grpo_steps(model_dir: str | Path, tokenizer_dir: str | Path | None, prompts: Sequence[dict], *, rewards: Sequence[Sequence],
                   steps: int = 3, warmup: int = 1, num_generations: int = 8, prompts_per_step: int = 4, steps_per_generation: int = 1,
                   num_iterations: int = 1, max_completion_length: int = 32, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                   lr: float = 1e-3, beta: float = 0.0, epsilon_low: float = 0.2, epsilon_high: float = 0.2, delta: float = 0.0,
                   loss_type: str = "dapo", scale_rewards: str = "group", importance_sampling: str = "token",
                   lora_rank: int = 0, lora_alpha: float = 16.0, lora_targets: str = "all_linear", bf16: bool = False,
                   adam_b1: float = 0.9, adam_b2: float = 0.999, adam_eps: float = 1e-8, threads: int | None = None, seed: int = 0) -> dict:
    """`steps` optimizer steps of trl.GRPOTrainer: rollout batches of `prompts_per_step` prompts
    x `num_generations` completions (prompts: plain-text {"prompt": ..., column: ...} rows, in
    order; the other columns go to the reward), split into `steps_per_generation` optimizer steps,
    each trained `num_iterations` times. `rewards`: [["module:function", weight], ...], functions
    with our reward signature (llm.rl.rewards), summed with their weights as TRL's reward_weights.
    Returns TRL's logged metrics per step, the per-step breakdown and its summary over the steps
    after `warmup`."""
    offline()
    if not prompts or not all(isinstance(p.get("prompt"), str) for p in prompts):
        raise UserError("the TRL GRPO peer needs plain-text {\"prompt\": ...} rows; got none or a row without a string prompt")
    if not rewards:
        raise UserError("the TRL GRPO peer got no rewards; pass [[\"module:function\", weight], ...]")
    if num_generations < 2:
        raise UserError(f"num_generations={num_generations}: GRPO needs at least 2 completions per prompt (a group std)")
    rows = prompts_per_step * num_generations
    if rows % steps_per_generation:
        raise UserError(f"prompts_per_step * num_generations = {rows} does not split into steps_per_generation={steps_per_generation} steps")
    if steps <= warmup:
        raise UserError(f"steps={steps} leaves no timed step after warmup={warmup}; raise steps")
    import datasets
    import torch
    import transformers
    import trl

    if threads:
        torch.set_num_threads(threads)
    peft_config = lora_config(lora_rank, lora_alpha, lora_targets)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir or model_dir))
    columns = sorted({k for p in prompts for k in p} - {"prompt"})
    recorder = timing_callback()
    with tempfile.TemporaryDirectory() as out:
        args = training_args(
            trl.GRPOConfig, out, steps=steps, lr=lr, optimizer="adamw", batch_size=rows // steps_per_generation, bf16=bf16,
            adam_b1=adam_b1, adam_b2=adam_b2, adam_eps=adam_eps, seed=seed,
            extra=dict(num_generations=num_generations, max_completion_length=max_completion_length,
                       steps_per_generation=steps_per_generation, num_iterations=num_iterations, temperature=temperature,
                       top_p=top_p, top_k=top_k, beta=beta, epsilon=epsilon_low, epsilon_high=epsilon_high, delta=delta or None,
                       loss_type=loss_type, scale_rewards=scale_rewards, importance_sampling_level=importance_sampling,
                       reward_weights=[float(w) for _, w in rewards], shuffle_dataset=False, log_completions=False,
                       mask_truncated_completions=False),
        )
        reward_funcs = [trl_reward(name, columns) for name, _ in rewards]
        trainer = trl.GRPOTrainer(model=str(model_dir), reward_funcs=reward_funcs, args=args,
                                  train_dataset=datasets.Dataset.from_list(list(prompts)), processing_class=tokenizer,
                                  peft_config=peft_config, callbacks=[recorder])
        trainer.remove_callback(transformers.PrinterCallback)
        clock = StepClock(trainer)

        class Steps(transformers.TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                clock.start()

            def on_step_end(self, args, state, control, **kwargs):
                clock.end_step()

        trainer.add_callback(Steps())
        trainer.train()
    return {
        "kind": "grpo",
        "steps": recorder.logs,
        "breakdown": clock.steps,
        **summarize(clock.steps, warmup),
        "warmup_steps": warmup,
        "first_step_loss": recorder.logs[0]["loss"] if recorder.logs else None,
        "peak_rss_bytes": peak_rss_bytes(),
        "threads": torch.get_num_threads(),
        "dtype": "bfloat16 autocast" if bf16 else "float32",
        "lora_rank": lora_rank,
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
    }
