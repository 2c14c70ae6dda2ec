"""llm plan's LoRA/full and QLoRA/full step-time ratios for gpt2_124m against the ones `llm bench
finetune` measured for the same shape on this machine (kept in configs/plan_mfu.json with the
command and date: the bench takes ~8 minutes on 2 cores, too long for a test). The MFU rows the
plan uses were measured on another model (small), so this is a prediction, not a replay."""

from __future__ import annotations

import json
from pathlib import Path

from llm.cli.main import main


def test_method_ratios_agree_with_bench_finetune_for_gpt2_124m(capsys):
    measured = json.loads(Path("configs/plan_mfu.json").read_text())["bench_finetune_gpt2_124m"]
    overrides = [f"--config.{o}" for o in measured["overrides"]]
    rc = main(["plan", "--config", "configs/gpt2_124m.py", *overrides, "--tokens", "1M", "--hardware", "cpu",
               "--compare", "full,lora,qlora", "--memory", "analytic", "--json"])
    assert rc == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    for method in ("lora", "qlora"):
        bench = measured["step_time_s"][method] / measured["step_time_s"]["full"]
        assert abs(rows[method]["time_ratio_to_full"] - bench) <= 0.10, (method, rows[method]["time_ratio_to_full"], bench)
