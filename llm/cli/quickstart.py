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

PRETRAIN_CONFIG = "configs/quickstart.py"
SFT_CONFIG = "configs/sft_lora_tiny.py"
RM_CONFIG = "configs/rm_tiny.py"
DPO_CONFIG = "configs/dpo_lora_tiny.py"
VOCAB = 1024  # configs/quickstart.py model.vocab_size
SHOWN = 4  # held-out SFT prompts completed before and after fine-tuning
GENERATE = ["--chat", "--input"]


def quickstart_commands(workdir: str, steps: int | None = None) -> list[list[str]]:
    """The stages, as argv lists for `llm` (without the leading `llm`)."""
    w = workdir.rstrip("/")
    corpus, curated, pre, sft = f"{w}/corpus", f"{w}/curated", f"{w}/pretrain", f"{w}/sft_lora"
    suite = f"{w}/eval_suite"  # held-out eval items; the pretraining corpus is decontaminated against them
    pairs = f"{corpus}/manifest.json"
    train_extra = [f"--config.train.steps={steps}"] if steps else []

    def generate(model: str, out: str) -> list[str]:
        return ["generate", "--workdir", model, *GENERATE, f"{corpus}/sft/validation.jsonl", "--limit", str(SHOWN),
                "--max-new-tokens", "96", "--output", out]

    def evaluate(model: str, name: str) -> list[str]:
        return ["eval", "--workdir", model, "--tasks", suite, "--output", f"{w}/eval/{name}/results.json"]

    return [
        ["data", "builtin", "--out", corpus],
        ["data", "eval-suite", "--corpus", f"{corpus}/manifest.json", "--out", suite],
        ["data", "curate", "--config", PRETRAIN_CONFIG, f"--config.data.path={corpus}/manifest.json",
         f"--config.data.curate.decontaminate={suite}/*.test.jsonl", "--out", curated],
        ["tokenizer", "train", "--config", PRETRAIN_CONFIG, f"--config.data.path={curated}/manifest.json",
         "--vocab-size", str(VOCAB), "--workdir", pre],
        ["train", "--config", PRETRAIN_CONFIG, "--workdir", pre, f"--config.data.path={curated}/manifest.json",
         f"--config.data.tokenizer={pre}/tokenizer/tokenizer.model", *train_extra],
        generate(pre, f"{w}/generations_before.jsonl"),
        ["sft", "--config", SFT_CONFIG, "--workdir", sft, "--init-from", pre, "--data", f"{corpus}/manifest.json", *train_extra],
        generate(sft, f"{w}/generations_after.jsonl"),
        evaluate(pre, "pretrain"),
        evaluate(sft, "sft_lora"),
        ["compare", f"{w}/eval/pretrain", f"{w}/eval/sft_lora"],
        ["rm", "--config", RM_CONFIG, "--workdir", f"{w}/rm", "--init-from", sft, "--data", pairs, *train_extra],
        ["dpo", "--config", DPO_CONFIG, "--workdir", f"{w}/dpo_lora", "--init-from", sft, "--data", pairs, *train_extra],
    ]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("quickstart", help="corpus -> eval suite -> curate -> tokenizer -> pretrain tiny -> LoRA SFT -> generations before/after -> eval -> reward model -> LoRA DPO -> report, on built-in data")
    p.add_argument("--workdir", default="runs/quickstart")
    p.add_argument("--steps", type=int, default=None, help="override every training stage's steps (default: the configs')")
    p.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    p.set_defaults(func=run)


def _summary_lines(summary: dict, keys: tuple[str, ...]) -> list[str]:
    lines = []
    for key in keys:
        if key in summary:
            value = summary[key]
            lines.append(f"- {key}: {value:.4g}" if isinstance(value, float) else f"- {key}: {value}")
    return lines


def _generations(workdir: Path) -> list[tuple[str, str, str, str]]:
    """(prompt, reference, before, after) for the held-out prompts completed before and after SFT."""
    before, after = workdir / "generations_before.jsonl", workdir / "generations_after.jsonl"
    if not (before.exists() and after.exists()):
        return []
    rows = []
    for b, a in zip(before.read_text().splitlines(), after.read_text().splitlines()):
        b, a = json.loads(b), json.loads(a)
        user = next(m["content"] for m in reversed(b["messages"]) if m["role"] == "user")
        reference = next((m["content"] for m in b["messages"] if m["role"] == "assistant"), "")
        rows.append((user, reference, b["completion"], a["completion"]))
    return rows


# (file in the workdir, heading, keys shown, plot) per training stage of the report.
REPORT_SECTIONS = (
    ("pretrain/summary.json", "Pretraining", ("step", "loss", "eval_loss", "eval_perplexity", "tokens_per_s", "mfu"),
     "![loss](pretrain/loss.png)"),
    ("sft_lora/cost.json", "LoRA instruction tuning (held-out assistant-token loss)",
     ("method", "trainable_params", "total_params", "trainable_fraction", "start_eval_loss", "eval_loss", "tokens_per_s",
      "step_flops", "peak_memory_bytes"), "![loss](sft_lora/loss.png)"),
    ("rm/cost.json", "Reward model (held-out preference pairs)",
     ("method", "start_eval_loss", "heldout_loss", "heldout_accuracy", "heldout_margin", "heldout_pairs", "tokens_per_s"),
     "![margin](rm/margins.png)"),
    ("dpo_lora/cost.json", "LoRA DPO (held-out preference pairs; reference = the base with adapters off)",
     ("method", "start_eval_loss", "heldout_loss", "heldout_rewards/accuracies", "heldout_rewards/margins", "heldout_pairs",
      "tokens_per_s"), "![margin](dpo_lora/margins.png)"),
)


def write_report(workdir: Path, timings: list[tuple[str, float]]) -> Path:
    """report.md: what ran, how long it took, the pretraining and fine-tuning results, and the
    held-out completions before and after fine-tuning."""
    lines = ["# Quickstart report", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| `{cmd}` | {seconds:.1f} |" for cmd, seconds in timings]
    for path, heading, keys, plot in REPORT_SECTIONS:
        if (workdir / path).exists():
            lines += ["", f"## {heading}", ""]
            lines += _summary_lines(json.loads((workdir / path).read_text()), keys)
            lines += ["", plot]
    evals = [(name, workdir / "eval" / name / "results.json") for name in ("pretrain", "sft_lora")]
    if all(path.exists() for _, path in evals):
        from llm.eval.report import compare_results_table

        lines += ["", "## Built-in evaluation: pretrained vs LoRA SFT (held-out modules; pretraining decontaminated against them)", "",
                  compare_results_table([n for n, _ in evals], [json.loads(p.read_text()) for _, p in evals]),
                  "", "Per-item samples and plots: `eval/pretrain/`, `eval/sft_lora/` (report.md, samples_*.jsonl)."]
    for i, (prompt, reference, before, after) in enumerate(_generations(workdir), 1):
        lines += ["", f"### Held-out prompt {i}", "", "```", prompt.rstrip(), "```"]
        for title, text in (("reference", reference), ("before fine-tuning", before), ("after fine-tuning", after)):
            lines += ["", f"{title}:", "", "```python", text.rstrip(), "```"]
    curate_report = workdir / "curated" / "report.json"
    if curate_report.exists():
        report = json.loads(curate_report.read_text())
        lines += ["", "## Curation", "", "```json", json.dumps(report.get("stages", report), indent=1)[:3000], "```"]
    path = workdir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def print_generations(workdir: Path, out=None) -> None:
    """The first held-out completion before and after fine-tuning, on the console."""
    rows = _generations(workdir)
    if not rows:
        return
    prompt, reference, before, after = rows[0]
    for title, text in (("held-out prompt", prompt), ("reference", reference), ("before fine-tuning", before), ("after fine-tuning", after)):
        print(f"\n--- {title} ---\n{text.rstrip()}", file=out)


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
    print_generations(Path(args.workdir))
    print(f"\nreport: {report} (all {SHOWN} held-out prompts, losses, timings)")
    return 0
