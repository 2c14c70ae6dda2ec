"""`llm bench [train|checkpoint|data|generate|finetune]`: measured throughput and cost, side by side
with a peer (Hugging Face) or with the alternatives (full vs LoRA vs QLoRA fine-tuning)."""

from __future__ import annotations

import argparse
import importlib

from llm.config.loading import load_config

# target -> (module, function); each function takes (config, args) and prints/writes its figures.
TARGETS = {
    "train": ("llm.bench.train_bench", "run_train_bench"),
    "checkpoint": ("llm.bench.checkpoint_bench", "run_checkpoint_bench"),
    "data": ("llm.data.bench", "run_data_bench"),
    "generate": ("llm.generate.bench", "run_generate_bench"),
    "finetune": ("llm.finetune.bench", "run_finetune_bench"),
}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmark training, checkpoints, the data pipeline, generation or fine-tuning methods")
    p.add_argument("target", nargs="?", default="train", choices=sorted(TARGETS))
    p.add_argument("--config", required=True)
    p.add_argument("--steps", type=int, default=10, help="timed steps (train, checkpoint); steps per method (finetune)")
    p.add_argument("--vs-hf", action="store_true", help="also measure Hugging Face transformers on the same shape")
    p.add_argument("--json", dest="json_path", default=None, help="write the figures to this JSON file")
    p.add_argument("--methods", default="full,lora,qlora,frozen", help="finetune: comma-separated, of full, lora, qlora, frozen")
    p.add_argument("--out", default="runs/bench_finetune", help="finetune: one workdir per method, and compare.md")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.config_overrides)
    module, name = TARGETS[args.target]
    fn = getattr(importlib.import_module(module), name)
    if args.target == "train":
        fn(config, args.steps, args.vs_hf, args.json_path)
    elif args.target == "checkpoint":
        fn(config, args.steps, args.json_path)
    elif args.target == "generate":
        fn(config, args.vs_hf, args.json_path)
    elif args.target == "finetune":
        from llm.finetune.bench import parse_methods

        fn(config, parse_methods(args.methods), args.steps, args.out, args.json_path)
    else:
        fn(config, args.json_path)
    return 0
