"""llm.compile.report: which nearby configs are worth compiling when one does not fit, the
fit verdict, and the text / JSON reports (from hand-made compiler results; the real compiler
runs in test_compile_aot.py and test_compile_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

from llm.compile.aot import StepCompilation
from llm.compile.report import CompileReport, Evaluation, candidate_overrides, format_report, report_json, write_json
from llm.config.loading import load_config
from llm.parallel.topology import GIB, parse_topology


def test_candidates_for_llama3_8b_on_32_chips():
    config = load_config("configs/llama3_8b.py", ["train.grad_accum=1"])
    # Already full remat and fully sharded: accumulate (micro-batches stay divisible by the 32
    # data-parallel devices), or split heads/MLP with tensor parallelism.
    assert candidate_overrides(config, 32) == [
        ("train.grad_accum=2",),
        ("train.grad_accum=4",),
        ("train.grad_accum=8",),
        ("mesh.tensor=2", "mesh.data=1", "mesh.fsdp=-1"),
        ("mesh.tensor=4", "mesh.data=1", "mesh.fsdp=-1"),
        ("mesh.tensor=8", "mesh.data=1", "mesh.fsdp=-1"),
    ]


def test_candidates_for_a_data_parallel_config_without_remat():
    config = load_config("configs/tiny.py", ["data.batch_size=32"])  # mesh data=-1, remat none, 2 kv heads
    assert candidate_overrides(config, 8) == [
        ("model.remat=save_matmul",),
        ("model.remat=full",),
        ("train.grad_accum=2",),
        ("train.grad_accum=4",),
        ("mesh.data=1", "mesh.fsdp=-1"),
        ("mesh.tensor=2", "mesh.data=1", "mesh.fsdp=-1"),
        ("model.remat=full", "train.grad_accum=2"),
        ("model.remat=full", "train.grad_accum=4"),
    ]


def compilation(total_gib: float, oom: bool = False) -> StepCompilation:
    total = int(total_gib * GIB)
    return StepCompilation(GIB, 2 * GIB, 1024, total - 3 * GIB - 1024, total, None if oom else total, None if oom else 1e12, "HLO", oom)


def test_fit_verdict():
    hbm = parse_topology("v5e-8").hbm_bytes
    assert Evaluation((), {}, compilation(15.0), hbm).fits
    assert not Evaluation((), {}, compilation(16.0), hbm).fits  # compiled, but over the chip's HBM
    assert not Evaluation((), {}, compilation(10.0, oom=True), hbm).fits  # the compiler refused


def test_text_and_json_reports(tmp_path):
    topology = parse_topology("v5p-64")
    hbm = topology.hbm_bytes
    base = Evaluation((), {"data": 1, "fsdp": 32, "tensor": 1}, compilation(151.6, oom=True), hbm)
    candidates = (
        Evaluation(("train.grad_accum=2",), {"data": 1, "fsdp": 32, "tensor": 1}, compilation(99.0, oom=True), hbm),
        Evaluation(("train.grad_accum=4",), {"data": 1, "fsdp": 32, "tensor": 1}, compilation(50.4), hbm),
    )
    report = CompileReport("configs/llama3_8b.py", topology, "TPU v5", 8_030_000_000, 2_097_152, 1.2e17, True, base,
                           candidates, ("a.hlo.txt", "b.hlo.txt", "c.hlo.txt"))
    text = format_report(report)
    assert "configs/llama3_8b.py on v5p-64: 32 chips (TPU v5, topology v5p:2x4x4), mesh data=1 x fsdp=32 x tensor=1" in text
    assert "total             151.60 GiB  -> does NOT fit" in text
    assert "to fit, add: --config.train.grad_accum=4" in text
    # 1.2e17 FLOPs / (32 chips x 459 TFLOP/s) = 8.17 s at 100% MFU, so 16.3 s at 50%.
    assert "at 50% MFU a step takes 16.3 s on 32 chips" in text
    write_json(report, tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data == report_json(report)
    assert (data["fits"], data["per_device_bytes"], data["hbm_bytes"], data["step_flops"]) == (False, int(151.6 * GIB), hbm, 1.2e17)
    assert [c["fits"] for c in data["candidates"]] == [False, True]
    assert data["candidates"][1]["overrides"] == ["--config.train.grad_accum=4"]


def test_a_refusal_without_a_figure_is_reported_with_its_reason():
    topology = parse_topology("v5p-64")
    vmem = StepCompilation(GIB, 2 * GIB, 1024, None, None, None, None, "HLO", True,
                           "RESOURCE_EXHAUSTED: E1001: CompileTimeScopedVmemOom: Ran out of memory in memory space vmem")
    base = Evaluation((), {"data": 1, "fsdp": 32, "tensor": 1}, vmem, topology.hbm_bytes)
    assert not base.fits
    candidate = Evaluation(("train.grad_accum=2",), base.mesh, vmem, topology.hbm_bytes)
    report = CompileReport("c.py", topology, "TPU v5", 1, 1, 1.0, False, base, (candidate,), ("a",))
    text = format_report(report)
    assert "temporaries              n/a" in text and "compiler: RESOURCE_EXHAUSTED: E1001: CompileTimeScopedVmemOom" in text
    assert "total         n/a  does not fit (the compiler ran out of on-chip VMEM for one fusion)" in text
    assert report_json(report)["per_device_bytes"] is None
