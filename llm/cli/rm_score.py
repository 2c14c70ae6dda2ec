"""`llm rm score`: rewards of texts from a trained reward model.

  llm rm score --workdir W --input rows.jsonl [--output scores.jsonl] [--batch-size N]

Rows: {"prompt": P, "completion": A} ("response" or "chosen" also name the answer; P and A are
strings or message lists) or {"text": T}. Output: one {"index": i, "reward": r} line per row,
i counting the input's rows from 0, written to --output (complete or not at all) or stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from llm.errors import UserError


def add_score_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "score", help="score texts with a trained reward model",
        description="Rewards of {prompt, completion} (or {text}) rows from the reward model of an `llm rm` workdir "
        "(W/merged), tokenized as its training pairs were. --config.* overrides apply to the model's stored config "
        "(e.g. --config.precision.compute=float32).",
    )
    p.add_argument("--workdir", required=True, help="an `llm rm` workdir (its merged/ reward model)")
    p.add_argument("--input", required=True, help='JSONL rows: {"prompt", "completion"|"response"|"chosen"} or {"text"}')
    p.add_argument("--output", help="JSONL file for {index, reward} lines (default: stdout)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    p.set_defaults(func=run_score)


def _write(path: Path, lines: list[str]) -> None:
    """All lines or nothing: a temp file beside the target, renamed over it when complete."""
    if path.is_dir():
        raise UserError(f"--output {str(path)!r} is a directory; pass a file name")
    if not path.parent.is_dir():
        raise UserError(f"--output {str(path)!r}: directory {str(path.parent)!r} does not exist; create it first")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text("".join(lines))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def run_score(args: argparse.Namespace) -> int:
    from llm.data.jsonl import read_jsonl
    from llm.finetune.reward_score import RewardScorer

    if args.batch_size < 1:
        raise UserError(f"--batch-size={args.batch_size} must be at least 1")
    output = Path(args.output) if args.output else None
    if output is not None and output.is_dir():
        raise UserError(f"--output {args.output!r} is a directory; pass a file name")
    rows = list(read_jsonl(args.input, "--input"))
    if not rows:
        raise UserError(f"--input {args.input!r} has no rows; write one JSON object per line")
    scorer = RewardScorer(args.workdir, getattr(args, "config_overrides", ()))
    sequences = [scorer.encode(record, f"--input line {n}") for n, record in rows]  # every row checked before the model loads
    start = time.perf_counter()
    rewards = scorer.score(sequences, args.batch_size)
    lines = [json.dumps({"index": i, "reward": float(r)}) + "\n" for i, r in enumerate(rewards)]
    if output is None:
        sys.stdout.write("".join(lines))
    else:
        _write(output, lines)
    tokens = sum(len(s) for s in sequences)
    print(f"scored {len(rows)} rows ({tokens} tokens) with {scorer.directory} in {time.perf_counter() - start:.1f} s: "
          f"mean reward {float(rewards.mean()):.4f}" + (f" -> {output}" if output else ""), file=sys.stderr)
    return 0
