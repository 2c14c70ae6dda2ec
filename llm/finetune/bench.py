"""Fine-tuning cost benchmark: the same model and batch fine-tuned fully, with LoRA, QLoRA and a
frozen backbone, each a short `llm sft` run on synthetic tokens, then `llm compare`'s table.

  python -m llm.finetune.bench --model configs/gpt2_124m.py --batch 4 --seq 512 --steps 4 --out runs/ftbench

Every number comes from the runs' cost.json: step FLOPs and peak memory from XLA's analysis of
the compiled step, step time measured by the training loop (the first step, which compiles, is
excluded). Benchmarks are not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llm.config.loading import load_config
from llm.finetune.cost import compare_table, read_cost
from llm.finetune.sft import run_sft

METHODS = {
    "full": [],
    "lora": ["peft.lora_rank=8", "peft.lora_targets=all_linear"],
    "qlora": ["peft.lora_rank=8", "peft.lora_targets=all_linear", "peft.quantize=nf4"],
    "frozen": ["peft.freeze=^(embed|pos_embed)$,^blocks/0/"],
}


def bench_config(model: str, method: str, batch: int, seq: int, steps: int, extra: list[str]):
    overrides = [
        "data.source=synthetic", "data.format=sft", f"data.batch_size={batch}", f"data.seq_len={seq}",
        f"train.steps={steps}", f"train.log_every={steps}", "train.eval_every=0", "train.measure_peak=false",
        "finetune.export_merged=false", "checkpoint.async_save=false", *METHODS[method], *extra,
    ]
    return load_config(model, overrides)


def run_bench(model: str, methods: list[str], batch: int, seq: int, steps: int, out: Path, extra: list[str]) -> str:
    names = []
    for method in methods:
        workdir = out / method
        run_sft(bench_config(model, method, batch, seq, steps, extra), workdir, overwrite=True)
        names.append(method)
    return compare_table(names, [read_cost(out / m) for m in names])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llm.finetune.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a model preset, e.g. configs/small.py or configs/gpt2_124m.py")
    p.add_argument("--methods", default="full,lora,qlora", help=f"comma-separated, from {', '.join(METHODS)}")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--steps", type=int, default=4, help="steps per method (at least 3: the first compiles)")
    p.add_argument("--out", required=True, help="directory for one workdir per method")
    p.add_argument("overrides", nargs="*", help="extra a.b=value config overrides for every run")
    args = p.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method {unknown[0]!r}; use {', '.join(METHODS)}")
    table = run_bench(args.model, methods, args.batch, args.seq, max(args.steps, 3), Path(args.out), args.overrides)
    print(table)
    (Path(args.out) / "compare.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
