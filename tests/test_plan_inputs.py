"""llm plan: token budgets, hardware names, prices, methods and the one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm.cli.main import main
from llm.config.loading import load_config
from llm.errors import UserError
from llm.plan.hardware import parse_hardware
from llm.plan.methods import method_config, method_of
from llm.plan.mfu import MfuRow, lookup
from llm.plan.planner import parse_tokens
from llm.plan.prices import read_prices, resolve_prices


@pytest.mark.parametrize("text, tokens", [("50M", 50_000_000), ("1.5B", 1_500_000_000), ("1T", 10**12), ("2e9", 2 * 10**9), ("1000", 1000), ("3k", 3000)])
def test_token_budgets(text, tokens):
    assert parse_tokens(text) == tokens


def test_hardware_catalogue():
    v5p = parse_hardware("v5p-8")
    assert (v5p.kind, v5p.chips, v5p.chip) == ("tpu", 4, "v5p") and v5p.topology.topology == "v5p:2x2x1"
    h100 = parse_hardware("h100x8")
    assert (h100.chips, h100.peak_flops, h100.link_name) == (8, 989e12, "NVLink")
    assert parse_hardware("h100x16").link_name == "inter-node NIC"
    assert parse_hardware("a100x8").peak_flops == 312e12
    assert parse_hardware("cpu").chips == 1


def _error(capsys, *argv) -> str:
    rc = main(["plan", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    return err


def test_unknown_hardware_lists_the_known_ones(capsys):
    err = _error(capsys, "--config", "configs/tiny.py", "--tokens", "1M", "--hardware", "v5e-8,tpu9000")
    assert "unknown hardware 'tpu9000'" in err and "v5e-N" in err and "h100xN" in err and "cpu" in err


def test_token_budget_that_is_not_a_number(capsys):
    err = _error(capsys, "--config", "configs/tiny.py", "--tokens", "lots", "--hardware", "cpu")
    assert "--tokens 'lots'" in err and "50M" in err


def test_price_table_with_a_missing_entry(tmp_path, capsys):
    table = json.loads(Path(read_prices().path).read_text())
    del table["per_chip_hour"]["h100"]
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(table))
    err = _error(capsys, "--config", "configs/tiny.py", "--tokens", "1M", "--hardware", "v5e-8,h100x8", "--price", str(path), "--memory", "analytic")
    assert "no on_demand price for 'h100'" in err and "--price" in err


def test_price_override_by_number():
    prices = resolve_prices("2.5", ["v5e", "h100"])
    assert prices.price("v5e") == 2.5 == prices.price("h100", "spot")
    with pytest.raises(UserError, match="not valid JSON"):
        resolve_prices(__file__, ["v5e"])


def test_a_config_that_fits_no_listed_hardware_names_the_smallest_change(capsys):
    err = _error(capsys, "--config", "configs/sft_full_llama3_8b.py", "--tokens", "1M", "--hardware", "v5e-1", "--memory", "analytic")
    assert "fits none of v5e-1" in err and "smallest change that fits: v5e-" in err


def test_methods_keep_the_configs_own_settings():
    lora = load_config("configs/sft_lora_llama3_8b.py")
    assert method_of(lora) == "lora"
    assert method_config(lora, "qlora").peft.lora_rank == 16 and method_config(lora, "qlora").peft.quantize == "nf4"
    full = method_config(lora, "full")
    assert method_of(full) == "full" and full.peft.lora_rank == 0
    tiny = load_config("configs/tiny.py")
    assert method_config(tiny, "lora").peft.lora_rank == 8  # llm bench finetune's LoRA
    assert method_of(method_config(tiny, "frozen")) == "frozen"


def test_mfu_curve_and_method_ratio():
    rows = [
        MfuRow("cpu", "full", 0.2, "measured", "d", "c1", d_model=100),
        MfuRow("cpu", "full", 0.6, "measured", "d", "c2", d_model=10000),
        MfuRow("cpu", "lora", 0.3, "measured", "d", "c3", d_model=10000),
        MfuRow("tpu", "full", 0.4, "assumed", "d", "none"),
    ]
    assert lookup(rows, "cpu", "cpu", "full", 1000).mfu == pytest.approx(0.4)  # halfway in log d_model
    assert lookup(rows, "cpu", "cpu", "full", 50).mfu == 0.2  # clamped
    assert lookup(rows, "cpu", "cpu", "lora", 1000).mfu == pytest.approx(0.2)  # the full curve x lora's ratio 0.5
    assert lookup(rows, "v5e", "tpu", "qlora").mfu == 0.4 and lookup(rows, "v5e", "tpu", "qlora").status == "assumed"
    with pytest.raises(UserError, match="no row for h100"):
        lookup(rows, "h100", "gpu", "full")


def test_cpu_rows_follow_the_host_cpu_engine():
    rows = [
        MfuRow("cpu", "full", 0.4, "measured", "d", "c1", cpu_engine="avx512_bf16"),
        MfuRow("cpu", "full", 0.3, "measured", "d", "c2", cpu_engine="amx"),
        MfuRow("tpu", "full", 0.4, "assumed", "d", "none"),
    ]
    assert lookup(rows, "cpu", "cpu", "full", cpu_engine="amx").mfu == 0.3
    assert lookup(rows, "cpu", "cpu", "full", cpu_engine="avx512_bf16").mfu == 0.4
    assert lookup(rows, "cpu", "cpu", "full", cpu_engine="none").mfu == 0.4  # no rows for it: the first listed
    assert lookup(rows, "v5e", "tpu", "full", cpu_engine="amx").mfu == 0.4
