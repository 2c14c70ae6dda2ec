"""`llm quickstart`: the README's main job, as a script of documented `llm` commands.

Nothing here is a special code path: each stage is the same command a user would type (the
README lists them, and a test checks the two agree), run in this process one after another,
followed by a short report in the workdir.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

PRETRAIN_CONFIG = "configs/tiny.py"
VOCAB = 1024


def quickstart_commands(workdir: str, steps: int | None = None) -> list[list[str]]:
    """The stages, as argv lists for `llm` (without the leading `llm`)."""
    w = workdir.rstrip("/")
    corpus, curated, pre = f"{w}/corpus", f"{w}/curated", f"{w}/pretrain"
    train_extra = [f"--config.train.steps={steps}"] if steps else []
    return [
        ["data", "builtin", "--out", corpus],
        ["data", "curate", "--config", PRETRAIN_CONFIG, f"--config.data.path={corpus}/manifest.json", "--out", curated],
        ["tokenizer", "train", "--config", PRETRAIN_CONFIG, f"--config.data.path={curated}/manifest.json",
         "--vocab-size", str(VOCAB), "--workdir", pre],
        ["train", "--config", PRETRAIN_CONFIG, "--workdir", pre, f"--config.data.path={curated}/manifest.json",
         f"--config.data.tokenizer={pre}/tokenizer/tokenizer.model", f"--config.model.vocab_size={VOCAB}", *train_extra],
    ]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("quickstart", help="corpus -> curate -> tokenizer -> pretrain tiny -> report, on built-in data")
    p.add_argument("--workdir", default="runs/quickstart")
    p.add_argument("--steps", type=int, default=None, help="override the pretraining steps (default: the tiny config's)")
    p.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    p.set_defaults(func=run)


def write_report(workdir: Path, timings: list[tuple[str, float]]) -> Path:
    """report.md: what ran, how long it took, and the training and eval results."""
    pre = workdir / "pretrain"
    lines = ["# Quickstart report", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| `{cmd}` | {seconds:.1f} |" for cmd, seconds in timings]
    summary_path = pre / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        lines += ["", "## Pretraining", ""]
        for key in ("step", "loss", "eval_loss", "eval_perplexity", "tokens_per_s", "mfu"):
            if key in summary:
                value = summary[key]
                lines.append(f"- {key}: {value:.4g}" if isinstance(value, float) else f"- {key}: {value}")
        lines += ["", "![loss](pretrain/loss.png)"]
    curate_report = workdir / "curated" / "report.json"
    if curate_report.exists():
        report = json.loads(curate_report.read_text())
        lines += ["", "## Curation", "", "```json", json.dumps(report.get("stages", report), indent=1)[:3000], "```"]
    path = workdir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(args: argparse.Namespace) -> int:
    from llm.cli.main import main

    commands = quickstart_commands(args.workdir, args.steps)
    if args.dry_run:
        for argv in commands:
            print("llm " + shlex.join(argv))
        return 0
    timings = []
    for argv in commands:
        line = "llm " + shlex.join(argv)
        print(f"\n$ {line}", flush=True)
        start = time.perf_counter()
        code = main(argv)
        if code:
            print(f"quickstart stopped: `{line}` exited {code}")
            return code
        timings.append((line, time.perf_counter() - start))
    report = write_report(Path(args.workdir), timings)
    print(f"\nreport: {report}")
    return 0
