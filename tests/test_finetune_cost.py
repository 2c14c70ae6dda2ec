"""cost.json and the `llm compare` table."""

import pytest

from helpers import tiny_config
from llm.errors import UserError
from llm.finetune.cost import compare_table, method_name, read_cost, write_cost


def test_compare_table_shows_runs_side_by_side_with_ratios(tmp_path):
    full = {"method": "full", "trainable_params": 1_000_000, "trainable_fraction": 1.0, "total_params": 1_000_000,
            "step_flops": 8e9, "peak_memory_bytes": 200 * 2**20, "tokens_per_s": 1000.0, "eval_loss": 2.0}
    lora = dict(full, method="lora r8", trainable_params=20_000, trainable_fraction=0.02, step_flops=5.6e9,
                peak_memory_bytes=100 * 2**20, tokens_per_s=1500.0, eval_loss=2.1)
    write_cost(tmp_path, lora)
    assert read_cost(tmp_path) == lora
    table = compare_table(["full", "lora"], [full, lora]).splitlines()
    assert table[0] == "| | full | lora |"
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table[2:]}
    assert rows["trainable params"] == ["1.000M", "20000 (0.02x)"]
    assert rows["trainable %"] == ["100.00%", "2.00%"]
    assert rows["step FLOPs (XLA)"] == ["8.0 G", "5.6 G (0.70x)"]
    assert rows["peak memory"] == ["200 MiB", "100 MiB (0.50x)"]
    assert rows["tokens/s"] == ["1000", "1500 (1.50x)"]
    assert rows["eval loss"] == ["2.0000", "2.1000"]
    assert "accuracy" not in rows  # rows no run has are left out


def test_method_names_and_missing_report(tmp_path):
    assert method_name(tiny_config()) == "full"
    assert method_name(tiny_config("peft.lora_rank=8")) == "lora r8"
    assert method_name(tiny_config("peft.lora_rank=8", "peft.quantize=nf4")) == "qnf4-lora r8"
    assert method_name(tiny_config("peft.freeze=^embed$")) == "frozen 1 pattern(s)"
    with pytest.raises(UserError, match="has no cost.json; run `llm sft`"):
        read_cost(tmp_path)
