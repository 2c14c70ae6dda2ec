"""`llm compile --levers`: per-chip memory under each remat policy and with the optimizer state
in host memory; analytic for a GPU (no GPU compiler here), compiled by libtpu for a TPU slice."""

from __future__ import annotations

import json

import pytest

from test_compile_cli import llm, require_libtpu

GIB = 2**30


def levers(path) -> dict[str, dict]:
    data = json.loads(path.read_text())
    return {" ".join(row["overrides"]) or "as given": row for row in data["levers"]}


def test_llama_1b_on_one_h100_analytic_table(tmp_path):
    out = llm("compile", "--config", "configs/llama_1b.py", "--topology", "h100x1", "--levers", "--json", str(tmp_path / "l.json"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "configs/llama_1b.py on h100x1: per-chip memory by lever, GiB (analytic; HBM 78.00 GiB per chip; " \
           "as given: model.remat=save_matmul)" in out.stdout
    rows = levers(tmp_path / "l.json")
    assert set(rows) == {"as given", "--config.optim.offload_state=true"} | {
        f"--config.model.remat={p}" for p in ("none", "full", "save_dot_except_mlpwi", "save_dot_with_context_except_mlp",
                                              "save_dot_except_mlp", "save_qkv_proj", "save_out_proj")}
    total = {k: r["per_device_bytes"] for k, r in rows.items()}
    assert total["--config.model.remat=none"] > 78 * GIB and not rows["--config.model.remat=none"]["fits"]
    assert total["--config.model.remat=none"] > total["as given"] > total["--config.model.remat=save_qkv_proj"] \
        > total["--config.model.remat=full"]
    given, offload = rows["as given"], rows["--config.optim.offload_state=true"]
    assert offload["opt_state_bytes"] == 0 and offload["host_opt_state_bytes"] == given["opt_state_bytes"] > 9 * GIB
    # the moments come in after the backward pass: they leave the backward's peak entirely
    assert given["per_device_bytes"] - offload["per_device_bytes"] == given["opt_state_bytes"]


def test_gpu_without_levers_is_the_as_given_row_and_exit_code_says_fit(tmp_path):
    out = llm("compile", "--config", "configs/llama_1b.py", "--topology", "h100x1", "--config.model.remat=none")
    assert out.returncode == 1 and "model.remat=none" in out.stdout
    assert [line for line in out.stdout.splitlines() if line.strip().startswith("as given")][0].endswith("no")


@pytest.mark.slow
def test_tpu_levers_are_compiled_and_offload_moves_the_moments_to_the_host():
    """Three of the levers, compiled in-process (the CLI's table is the GPU test's path)."""
    from llm.compile.levers import lever_rows
    from llm.config.loading import load_config
    from llm.plan.hardware import parse_hardware

    require_libtpu()
    config = load_config("configs/tiny.py", ["model.remat=full", "model.scan_layers=true", "data.batch_size=32",
                                             "data.seq_len=1024", "model.max_seq_len=1024"])
    rows = lever_rows(config, parse_hardware("v5e-8"), [(), ("model.remat=none",), ("optim.offload_state=true",)])
    given, none, offload = (r.memory for r in rows)
    assert all(m.source.startswith("compiled (libtpu") for m in (given, none, offload))
    # the moments move to the host; Adam's step counters (two int32 scalars) stay on the chip
    assert offload.optimizer == 8 and offload.host == given.optimizer - 8 > 0
    # (tiny's step peaks in its update, where the moments come back in: offloading pays only where
    # the backward pass dominates, as for llama3_8b on v5p-64 in the README)
    assert none.total > given.total
