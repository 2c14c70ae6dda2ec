"""`llm quickstart` (the README main job) end to end, shortened with --steps: every stage runs,
the LoRA fine-tuning starts from the pretrained model, the reward model and LoRA DPO from the
fine-tuned one, and the report holds the held-out completions and preference results."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from llm.cli.quickstart import SHOWN, quickstart_commands

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_runs_every_stage_and_reports_generations_before_and_after(tmp_path):
    workdir = tmp_path / "qs"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    out = subprocess.run([sys.executable, "-m", "llm.cli.main", "quickstart", "--workdir", str(workdir), "--steps", "4"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    ran = [line[len("$ "):] for line in out.stdout.splitlines() if line.startswith("$ llm ")]
    assert ran == ["llm " + shlex.join(argv) for argv in quickstart_commands(str(workdir), 4)]
    for name in ("before", "after"):
        rows = [json.loads(line) for line in (workdir / f"generations_{name}.jsonl").read_text().splitlines()]
        assert len(rows) == SHOWN and all(r["tokens"] for r in rows)
    cost = json.loads((workdir / "sft_lora" / "cost.json").read_text())
    assert cost["method"] == "lora r8" and cost["trainable_fraction"] < 0.1
    assert cost["start_eval_loss"] is not None and cost["eval_loss"] is not None
    report = (workdir / "report.md").read_text()
    for heading in ("## Pretraining", "## LoRA instruction tuning", f"### Held-out prompt {SHOWN}", "after fine-tuning:",
                    "## Reward model", "- heldout_accuracy:", "## LoRA DPO", "- heldout_rewards/accuracies:",
                    "## Built-in evaluation", "builtin_next_line", "pass_at_1"):
        assert heading in report
    dpo = json.loads((workdir / "dpo_lora" / "cost.json").read_text())
    assert dpo["method"] == "lora r8" and dpo["heldout_pairs"] > 0
    assert (workdir / "dpo_lora" / "margins.png").is_file() and (workdir / "rm" / "merged" / "reward_head.safetensors").is_file()
    assert "--- after fine-tuning ---" in out.stdout
    for name in ("pretrain", "sft_lora"):
        results = json.loads((workdir / "eval" / name / "results.json").read_text())
        assert set(results["results"]) == {"builtin_perplexity", "builtin_next_line", "builtin_docstring_name", "builtin_docstring_body"}
    curated = json.loads((workdir / "curated" / "report.json").read_text())
    assert next(s for s in curated["stages"] if s["stage"] == "decontaminate")["docs_removed"] > 0  # the held-out modules
