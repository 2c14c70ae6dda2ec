"""The peer our preference tuning is checked and timed against: TRL's DPOTrainer and RewardTrainer
on PyTorch CPU, from a local Hugging Face model directory, offline.

The settings make TRL's run a pure function of the weights and the pairs, so our trainers can be
compared with it step by step: no dropout, f32 (unless `bf16` asks for autocast), the pairs in
their given order (a sequential sampler), a constant learning rate with no warmup, no weight decay,
no gradient clipping, and Adam's betas / epsilon (or plain SGD) as given. Every metric TRL logs is
returned per step under TRL's own names (`loss`, `rewards/margins`, `rewards/accuracies`, ... for
DPO; `loss`, `accuracy`, `margin`, ... for the reward model), with the real (non-pad) tokens each
step ran, the steady-state tokens/s (the first step, which warms up, excluded) and the process's
peak RSS. `run_in_subprocess` runs either in a fresh Python so that the peak is TRL's alone.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from llm.errors import UserError

# Our peft.lora_targets presets as the Llama-family module names PEFT targets.
LORA_MODULES = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
    "all_linear": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def lora_config(lora_rank: int, lora_alpha: float, lora_targets: str):
    """The `peft.LoraConfig` matching our peft.lora_* settings (None without LoRA)."""
    if not lora_rank:
        return None
    import peft

    if lora_targets not in LORA_MODULES:
        raise UserError(f"lora_targets={lora_targets!r}: the TRL peer maps only {', '.join(LORA_MODULES)}")
    return peft.LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=0.0, bias="none",
                           target_modules=LORA_MODULES[lora_targets], task_type="CAUSAL_LM")
OPTIMIZERS = {"adamw": "adamw_torch", "sgd": "sgd"}


def offline() -> None:
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[key] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets

    datasets.disable_progress_bars()


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _check_pairs(pairs: Sequence[dict], batch_size: int) -> None:
    if not pairs:
        raise UserError("the TRL peer got no preference pairs; pass at least one {prompt, chosen, rejected} record")
    for i, pair in enumerate(pairs):
        missing = [k for k in ("prompt", "chosen", "rejected") if not isinstance(pair.get(k), str)]
        if missing:
            raise UserError(f"pair {i} has no string {missing[0]!r}; the TRL peer takes plain-text {{prompt, chosen, rejected}} records")
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size} must be >= 1")


def training_args(config_cls, output_dir: str, *, steps: int, lr: float, optimizer: str, batch_size: int, bf16: bool,
                  adam_b1: float, adam_b2: float, adam_eps: float, seed: int, extra: dict) -> Any:
    """The deterministic settings both trainers share (see the module docstring)."""
    import torch

    if optimizer not in OPTIMIZERS:
        raise UserError(f"optimizer={optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    return config_cls(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=batch_size, gradient_accumulation_steps=1,
        learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0,
        optim=OPTIMIZERS[optimizer], adam_beta1=adam_b1, adam_beta2=adam_b2, adam_epsilon=adam_eps,
        bf16=bf16, gradient_checkpointing=False, use_cpu=True, train_sampling_strategy="sequential",
        dataloader_num_workers=0, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        seed=seed, data_seed=seed, disable_dropout=True, model_init_kwargs={"dtype": torch.float32}, **extra,
    )


def timing_callback():
    """A TrainerCallback recording every training log and when each optimizer step ended."""
    import transformers

    class Recorder(transformers.TrainerCallback):
        def __init__(self) -> None:
            self.logs: list[dict] = []
            self.step_ends: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.step_ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and "train_runtime" not in logs:
                self.logs.append({"step": state.global_step, **{k: float(v) for k, v in logs.items()}})

    return Recorder()


def _result(recorder, tokens_per_step: list[int], extra: dict) -> dict:
    """Per-step metrics plus tokens/s over the steps after the first (which warms up)."""
    import torch
    import transformers
    import trl

    steps = recorder.logs
    for row, tokens in zip(steps, tokens_per_step):
        row["tokens"] = tokens
    out = {
        "steps": steps,
        "first_step_loss": steps[0]["loss"] if steps else None,
        "tokens_per_step": tokens_per_step,
        "step_times": [b - a for a, b in zip([recorder.start, *recorder.step_ends], recorder.step_ends)],
        "peak_rss_bytes": peak_rss_bytes(),
        "threads": torch.get_num_threads(),
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
        **extra,
    }
    timed = recorder.step_ends
    if len(timed) >= 2:
        elapsed = timed[-1] - timed[0]
        out["timed_tokens"] = sum(tokens_per_step[1 : len(timed)])
        out["tokens_per_s"] = out["timed_tokens"] / elapsed
        out["step_time"] = elapsed / (len(timed) - 1)
    return out


def _tokens_per_step(trainer, n_pairs: int, batch_size: int, steps: int) -> list[int]:
    """Real tokens of each step's batch, as TRL counts them (its `num_tokens`: the attention-mask
    sum over both sequences of every pair), the pairs taken in order and cycled."""
    lengths = []
    ds = trainer.train_dataset
    for i in range(len(ds)):
        row = ds[i]
        if "prompt_ids" in row:  # DPO: prompt + answer, for each answer
            lengths.append(2 * len(row["prompt_ids"]) + len(row["chosen_ids"]) + len(row["rejected_ids"]))
        else:  # reward model: the whole sequences
            lengths.append(len(row["chosen_ids"]) + len(row["rejected_ids"]))
    if len(lengths) != n_pairs:
        raise UserError(f"TRL kept {len(lengths)} of the {n_pairs} pairs (max_length?); raise max_length or shorten the pairs")
    per_epoch = [lengths[i : i + batch_size] for i in range(0, len(lengths), batch_size)]
    return [sum(per_epoch[s % len(per_epoch)]) for s in range(steps)]


def trl_dpo_steps(model_dir: str | Path, tokenizer_dir: str | Path | None, pairs: Sequence[dict], *, loss_type: str = "sigmoid",
                  beta: float = 0.1, steps: int = 3, lr: float = 1e-3, optimizer: str = "adamw", batch_size: int = 8,
                  lora_rank: int = 0, lora_alpha: float = 16.0, lora_targets: str = "all_linear", bf16: bool = False,
                  label_smoothing: float = 0.0, adam_b1: float = 0.9, adam_b2: float = 0.999, adam_eps: float = 1e-8,
                  max_length: int | None = None, threads: int | None = None, seed: int = 0) -> dict:
    """`steps` steps of trl.DPOTrainer on `pairs` (plain-text {prompt, chosen, rejected}; TRL appends
    EOS), batches of `batch_size` pairs in order. Full fine-tuning keeps TRL's default separate
    reference model; `lora_rank` > 0 trains PEFT LoRA adapters (B = 0 at start) and takes the
    reference with the adapters off, as ours does. Returns the per-step metrics and the figures."""
    offline()
    _check_pairs(pairs, batch_size)
    import datasets
    import torch
    import transformers
    import trl

    if threads:
        torch.set_num_threads(threads)
    peft_config = lora_config(lora_rank, lora_alpha, lora_targets)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir or model_dir))
    recorder = timing_callback()
    with tempfile.TemporaryDirectory() as out:
        args = training_args(trl.DPOConfig, out, steps=steps, lr=lr, optimizer=optimizer, batch_size=batch_size, bf16=bf16,
                             adam_b1=adam_b1, adam_b2=adam_b2, adam_eps=adam_eps, seed=seed,
                             extra=dict(loss_type=[loss_type], beta=beta, label_smoothing=label_smoothing,
                                        max_length=max_length, precompute_ref_log_probs=False, padding_free=False))
        trainer = trl.DPOTrainer(model=str(model_dir), args=args, train_dataset=datasets.Dataset.from_list(list(pairs)),
                                 processing_class=tokenizer, peft_config=peft_config, callbacks=[recorder])
        trainer.remove_callback(transformers.PrinterCallback)  # the figures come back in the result, not on stdout
        tokens = _tokens_per_step(trainer, len(pairs), batch_size, steps)
        token_ids = [{k: list(trainer.train_dataset[i][k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
                     for i in range(len(trainer.train_dataset))]
        trainer.train()
    return _result(recorder, tokens, {"kind": "dpo", "loss_type": loss_type, "beta": beta, "lora_rank": lora_rank,
                                      "dtype": "bfloat16 autocast" if bf16 else "float32", "token_ids": token_ids})


def trl_reward_steps(model_dir: str | Path, tokenizer_dir: str | Path | None, pairs: Sequence[dict], *, steps: int = 3,
                     lr: float = 1e-3, optimizer: str = "adamw", batch_size: int = 8, bf16: bool = False,
                     center_rewards_coefficient: float | None = None, adam_b1: float = 0.9, adam_b2: float = 0.999,
                     adam_eps: float = 1e-8, max_length: int | None = None, threads: int | None = None, seed: int = 0) -> dict:
    """`steps` steps of trl.RewardTrainer on `pairs` from the *ForSequenceClassification model
    (num_labels=1) saved in `model_dir`: TRL scores prompt + chosen and prompt + rejected (EOS
    appended), loss -logsigmoid(r_c - r_r) (+ centering). Returns TRL's per-step `loss`,
    `accuracy`, `margin`, ... and the figures."""
    offline()
    _check_pairs(pairs, batch_size)
    import datasets
    import torch
    import transformers
    import trl

    if threads:
        torch.set_num_threads(threads)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir or model_dir))
    recorder = timing_callback()
    with tempfile.TemporaryDirectory() as out:
        args = training_args(trl.RewardConfig, out, steps=steps, lr=lr, optimizer=optimizer, batch_size=batch_size, bf16=bf16,
                             adam_b1=adam_b1, adam_b2=adam_b2, adam_eps=adam_eps, seed=seed,
                             extra=dict(center_rewards_coefficient=center_rewards_coefficient, max_length=max_length))
        trainer = trl.RewardTrainer(model=str(model_dir), args=args, train_dataset=datasets.Dataset.from_list(list(pairs)),
                                    processing_class=tokenizer, callbacks=[recorder])
        trainer.remove_callback(transformers.PrinterCallback)
        tokens = _tokens_per_step(trainer, len(pairs), batch_size, steps)
        token_ids = [{k: list(trainer.train_dataset[i][k]) for k in ("chosen_ids", "rejected_ids")}
                     for i in range(len(trainer.train_dataset))]
        trainer.train()
    return _result(recorder, tokens, {"kind": "reward", "dtype": "bfloat16 autocast" if bf16 else "float32", "token_ids": token_ids})


RUNNERS = {"dpo": trl_dpo_steps, "reward": trl_reward_steps}
ELSEWHERE = {"grpo": "llm.bench.trl_grpo_peer:trl_grpo_steps"}  # peers in their own module (they import this one)


def runner(kind: str):
    """The peer function of `kind` (RUNNERS, or ELSEWHERE's module:function)."""
    if kind in ELSEWHERE:
        import importlib

        module, name = ELSEWHERE[kind].split(":")
        return getattr(importlib.import_module(module), name)
    if kind not in RUNNERS:
        raise UserError(f"TRL peer kind {kind!r} is not one of {', '.join([*RUNNERS, *ELSEWHERE])}")
    return RUNNERS[kind]


def run_in_subprocess(kind: str, model_dir: str | Path, tokenizer_dir: str | Path | None, pairs: Sequence[dict],
                      timeout: float = 1800, **kwargs: Any) -> dict:
    """RUNNERS[kind] in a fresh Python process (its own peak RSS, no JAX loaded); the result as
    that function returns it. The child's stderr is shown if it fails."""
    runner(kind)
    with tempfile.TemporaryDirectory() as tmp:
        spec, result = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps({"kind": kind, "model_dir": str(model_dir), "tokenizer_dir": str(tokenizer_dir) if tokenizer_dir else None,
                                    "pairs": list(pairs), "kwargs": kwargs, "out": str(result)}))
        proc = subprocess.run([sys.executable, "-m", "llm.bench.trl_peer", str(spec)], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"})
        if proc.returncode != 0 or not result.is_file():
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise UserError(f"the TRL {kind} peer failed (exit {proc.returncode}):\n{tail}")
        return json.loads(result.read_text())


def main(argv: Sequence[str]) -> int:
    """`python -m llm.bench.trl_peer SPEC.json`: the child side of run_in_subprocess."""
    spec = json.loads(Path(argv[0]).read_text())
    out = runner(spec["kind"])(spec["model_dir"], spec["tokenizer_dir"], spec["pairs"], **spec["kwargs"])
    Path(spec["out"]).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
