"""`llm export`: a run's latest (or a chosen) checkpoint as params only, for inference and as a
fine-tuning starting point (optionally cast to bf16)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a workdir's weights as a params-only checkpoint")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True, help="new directory for the params checkpoint")
    p.add_argument("--step", type=int, default=-1, help="checkpoint step (default: the latest valid one)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="cast the weights when writing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llm.checkpoint.export import export_workdir

    out = export_workdir(args.workdir, args.out, step=args.step, dtype=args.dtype)
    print(f"exported {out}")
    return 0
