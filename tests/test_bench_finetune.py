"""`llm bench finetune`: full vs LoRA on the same model and batch, each a real short SFT run,
side by side in compare.md and the JSON file."""

from __future__ import annotations

import json

import pytest

from llm.cli.main import main


@pytest.mark.slow  # two short SFT runs, each compiling its step
def test_bench_finetune_runs_each_method_and_writes_the_table(tmp_path, capsys):
    out, figures = tmp_path / "bench", tmp_path / "bench.json"
    rc = main(["bench", "finetune", "--config", "configs/tiny.py", "--config.data.seq_len=64", "--config.data.batch_size=8",
               "--steps", "3", "--methods", "full,lora", "--out", str(out), "--json", str(figures)])
    assert rc == 0
    data = json.loads(figures.read_text())
    assert list(data) == ["full", "lora"]
    assert data["full"]["method"] == "full" and data["lora"]["method"] == "lora r8"  # methods do not leak into each other
    assert data["lora"]["trainable_params"] < 0.2 * data["full"]["trainable_params"]
    assert data["lora"]["step_flops"] < data["full"]["step_flops"]
    assert data["lora"]["model_step_flops"] < data["full"]["model_step_flops"]
    assert 0.5 < data["full"]["step_flops"] / data["full"]["model_step_flops"] < 2  # XLA and the formula agree
    assert data["full"]["batch"] == [8, 64] == data["lora"]["batch"]
    table = (out / "compare.md").read_text()
    assert table.startswith("| | full | lora |") and table.strip() in capsys.readouterr().out


def test_unknown_method_is_a_one_line_error(capsys):
    rc = main(["bench", "finetune", "--config", "configs/tiny.py", "--methods", "full,dora"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown method 'dora'" in err and err.count("\n") == 1
