"""Every benchmark of `llm`, one target each, behind one signature.

A target is a module under llm/bench exposing `run(args: argparse.Namespace) -> dict` (it
measures, prints its figures and returns them) plus the command-line options declared here.
The registry is this file's `TARGETS`, written out explicitly: nothing registers itself on
import, and the target modules (which import JAX, PyTorch, ...) are only imported when run, so
building the `llm` parser stays cheap.

  llm bench [train] --config C [--steps N] [--vs-hf]     train step tokens/s, MFU, memory vs HF
  llm bench checkpoint --config C [--steps N]            async save blocking time, restore time
  llm bench data --config C                              input pipeline tokens/s
  llm bench generate --config C [--vs-hf]                decode tokens/s vs HF `generate`
  llm bench finetune --config C [--methods ...]          full vs LoRA vs QLoRA vs frozen
  llm bench convert [--preset P]  (= llm convert bench)  HF import/export time and peak RSS
  llm bench dpo --config C [--model M] [--vs-trl]        DPO tokens/s and peak RSS vs trl.DPOTrainer
  llm bench grpo --config C [--model M] [--vs-trl]       GRPO steps/s and step breakdown vs trl.GRPOTrainer
  llm bench attention [--impl cudnn] [--vs xla]          packed-batch attention vs another impl and f32, no leaks

Every target takes `--json FILE` (the returned figures, written by the CLI).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from typing import Any, Mapping

from llm.bench.convert_presets import PRESETS


@dataclasses.dataclass(frozen=True)
class Option:
    """One command-line option: argparse's flag and keyword arguments."""

    flag: str
    kwargs: Mapping[str, Any]

    @property
    def dest(self) -> str:
        return self.kwargs.get("dest", self.flag.lstrip("-").replace("-", "_"))

    @property
    def default(self) -> Any:
        return self.kwargs.get("default", False if self.kwargs.get("action") == "store_true" else None)


@dataclasses.dataclass(frozen=True)
class Target:
    """A benchmark: its name, one-line help, options, and the module whose `run(args)` it calls."""

    name: str
    help: str
    module: str
    options: tuple[Option, ...]

    @property
    def takes_config(self) -> bool:
        return any(o.flag == "--config" for o in self.options)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        for option in self.options:
            parser.add_argument(option.flag, **option.kwargs)

    def run(self, args: argparse.Namespace) -> dict:
        return importlib.import_module(self.module).run(args)


def _option(flag: str, help: str, **kwargs: Any) -> Option:
    return Option(flag, {"help": help, **kwargs})


CONFIG = _option("--config", "configs/*.py to measure (--config.a.b=v overrides apply)", required=True)
JSON = _option("--json", "also write the figures to this JSON file", dest="json_path", default=None)
VS_HF = _option("--vs-hf", "also measure Hugging Face transformers on the same shape", action="store_true")


def _steps(help: str) -> Option:
    return _option("--steps", help, type=int, default=10)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("train", "train step: tokens/s, step time, MFU, peak memory (and the HF peer)", "llm.bench.train",
               (CONFIG, _steps("timed steps"), VS_HF, JSON,
                _option("--profile", "after timing, trace 3 more steps with jax.profiler into this directory and print "
                        "the ops that took the step's time (README: Profile a step)", default=None))),
        Target("checkpoint", "how long an async save blocks the loop, and how long a restore takes", "llm.bench.checkpoint",
               (CONFIG, _steps("timed train steps the save is compared with"), JSON)),
        Target("data", "input pipeline tokens/s (read, tokenize, pack, batch) on real text", "llm.bench.data",
               (CONFIG, JSON)),
        Target("generate", "decode tokens/s of our sampler (and HF generate on the same weights)", "llm.bench.generate",
               (CONFIG, VS_HF, JSON, _option("--batches", "comma-separated decode batch sizes (default 1,16)", default=None))),
        Target("finetune", "the same model fine-tuned fully, with LoRA, QLoRA and frozen layers", "llm.bench.finetune",
               (CONFIG, _steps("steps per method (at least 3: the first compiles)"),
                _option("--methods", "comma-separated, of full, lora, qlora, frozen", default="full,lora,qlora,frozen"),
                _option("--out", "one workdir per method, and compare.md", default="runs/bench_finetune"),
                JSON)),
        Target("convert", "time and peak memory of from-hf / to-hf on a random local model", "llm.bench.convert",
               (_option("--preset", "model shape", choices=sorted(PRESETS), default="llama-1b"),
                _option("--dtype", "checkpoint and params dtype", choices=("float32", "bfloat16"), default="float32"),
                _option("--workdir", "where the model files go (default: a temporary directory, deleted after)"),
                JSON)),
        Target("dpo", "DPO steps (llm dpo) vs trl.DPOTrainer on the same model, pairs, batch and LoRA rank", "llm.bench.dpo",
               (CONFIG, _option("--steps", "steps per side (the first is not timed)", type=int, default=6),
                _option("--vs-trl", "also run trl.DPOTrainer (PyTorch CPU; f32, and bf16 autocast where the CPU has AMX / AVX-512 BF16)",
                        action="store_true"),
                _option("--model", "take the model shape from this config instead (e.g. configs/small.py)", default=None),
                _option("--data", "preference JSONL or a manifest.json (default: built-in pairs of a few stdlib packages)", default=None),
                _option("--out", "the shared HF model, pairs, our workdir and bench.md", default="runs/bench_dpo"),
                JSON)),
        Target("grpo", "GRPO steps (llm grpo) vs trl.GRPOTrainer on the same model, prompts, G, new tokens and LoRA rank",
               "llm.bench.grpo",
               (CONFIG, _option("--steps", "steps per side (at least --warmup + 2; the first --warmup are not timed)", type=int, default=6),
                _option("--warmup", "steps left out of the figures on both sides (compilation, warm-up)", type=int, default=1),
                _option("--vs-trl", "also run trl.GRPOTrainer (PyTorch CPU; f32, and bf16 autocast where the CPU has AMX / AVX-512 BF16)",
                        action="store_true"),
                _option("--model", "take the model shape from this config instead (e.g. configs/small.py)", default=None),
                _option("--out", "the shared HF model, our workdir, bench.md and bench.json", default="runs/bench_grpo"),
                JSON)),
        Target("eval", "llm eval vs lm-evaluation-harness (hf backend, PyTorch CPU) on the built-in tasks: items/s and identical scores",
               "llm.bench.eval",
               (CONFIG, _option("--vs-lm-eval", "also run lm-eval's hf backend (f32, and bf16 where the CPU has AMX / AVX-512 BF16)",
                                action="store_true"),
                _option("--limit", "items per task", type=int, default=100),
                _option("--tasks", "built-in tasks to time (comma-separated)",
                        default="builtin_next_line,builtin_docstring_name,builtin_perplexity,builtin_docstring_body"),
                _option("--batch-sizes", "lm-eval batch sizes to try (its best is the peer figure)", default="1,8,32"),
                _option("--batch-size", "our requests per forward pass", type=int, default=16),
                _option("--out", "the HF model, the task files, bench.md and bench.json", default="runs/bench_eval"),
                JSON)),
        Target("attention", "attention impl vs another on packed documents: outputs, q/k/v gradients, f32 reference, "
               "no attention across documents, fwd+bwd ms", "llm.bench.attention",
               (_option("--impl", "implementation checked (auto: cudnn on GPU, blocked elsewhere)",
                        choices=("auto", "cudnn", "xla", "blocked"), default="auto"),
                _option("--vs", "implementation it is compared with (run in f32 as the reference; xla is when this is cudnn)",
                        choices=("auto", "cudnn", "xla", "blocked"), default="xla"),
                _option("--batch", "rows", type=int, default=2),
                _option("--seq", "positions per row (several packed documents, then padding)", type=int, default=512),
                _option("--heads", "query heads", type=int, default=8),
                _option("--kv-heads", "key/value heads (grouped-query when fewer than --heads)", type=int, default=2),
                _option("--head-dim", "per-head dimension", type=int, default=64),
                _option("--dtype", "q, k, v dtype", choices=("bfloat16", "float32"), default="bfloat16"),
                _option("--block", "query positions per block of the blocked implementation", type=int, default=64),
                _option("--seed", "random documents, q, k, v and cotangent", type=int, default=0),
                JSON)),
    )
}

DEFAULT_TARGET = "train"  # `llm bench --config ...` with no target name
