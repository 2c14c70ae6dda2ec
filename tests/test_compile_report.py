"""llm.compile.report: which nearby configs are worth compiling when one does not fit, the
fit verdict, the text / JSON reports (from hand-made compiler results; the real compiler
runs in test_compile_aot.py and test_compile_cli.py), and the model FLOPs of a fine-tuning
step (frozen weights get no weight gradient)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import pytest

from llm.compile.aot import StepCompilation
from llm.compile.report import (CompileReport, Evaluation, FinetuneSplit, candidate_overrides, format_report, report_json,
                                write_json)
from llm.config.loading import load_config
from llm.errors import UserError
from llm.finetune.tasks import classification_labels, is_partitioned, partition_for_config
from llm.model.build import abstract_model
from llm.model.spec import model_spec, non_embedding_params
from llm.parallel.rules import AxisRules
from llm.parallel.topology import GIB, parse_topology
from llm.peft.lora import unmerge
from llm.train.flops import flops_per_token, partitioned_flops_per_token


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


def test_a_fine_tuning_report_splits_frozen_and_trainable_params():
    topology = parse_topology("v5e-8")
    c = StepCompilation(GIB // 8, GIB // 4, 1024, 9 * GIB, 13 * GIB, None, None, "HLO", False, frozen_bytes=int(3.74 * GIB))
    split = FinetuneSplit("lora r16", "sft", 41_943_040, 8_030_261_248, 3.9e10)
    base = Evaluation((), {"data": 1, "fsdp": 8, "tensor": 1}, c, topology.hbm_bytes, split)
    report = CompileReport("c.py", topology, "TPU v5 lite", 8_030_261_248, 65536, 3.9e10 * 65536, True, base, (), ("a",))
    text = format_report(report)
    assert "fine-tuning (sft, lora r16): 41.94M trainable (0.52%), 8.03B frozen (no gradient, no optimizer state)" in text
    assert "frozen params       3.74 GiB" in text and "trainable params    0.12 GiB" in text
    assert "    parameters  " not in text and "frozen weights get no weight gradient" in text
    data = report_json(report)
    assert data["finetune"]["method"] == "lora r16" and data["memory"]["frozen_bytes"] == int(3.74 * GIB)


@pytest.mark.parametrize("path", ["configs/tiny.py", "configs/gpt2_124m.py"])
@pytest.mark.parametrize("scan", [False, True])
def test_partitioned_flops(path, scan):
    """Everything trained: the pretraining formula. Only the LM head trained: forward plus the
    head's weight gradient, no input gradients. LoRA everywhere: forward + input gradients
    for every weight, 6 per adapter weight."""
    config = load_config(path, [f"model.scan_layers={scan}"])
    spec = model_spec(config, platform="cpu")
    graphdef, abstract = abstract_model(spec, AxisRules.from_config(config.mesh.rules))
    params = abstract.to_pure_dict()
    t, (n, d, v, layers) = config.data.seq_len, (non_embedding_params(spec), spec.d_model, spec.vocab_size, spec.n_layers)
    assert partitioned_flops_per_token(spec, t, params, {}) == flops_per_token(spec, t)
    forward = 2 * n + 4 * layers * d * t + 2 * d * v
    if not spec.tie_embeddings:
        head_only = partitioned_flops_per_token(spec, t, {"head": params["head"]}, {k: x for k, x in params.items() if k != "head"})
        assert head_only == forward + 2 * d * v
    lora_config = load_config(path, [f"model.scan_layers={scan}", "peft.lora_rank=4"])
    _, trainable, frozen = partition_for_config(lora_config).apply(graphdef, params)
    adapters = sum(x.size for x in jax.tree_util.tree_leaves(trainable))
    assert adapters > 0 and not unmerge(frozen)[1]
    lora = partitioned_flops_per_token(spec, t, trainable, frozen)
    assert lora == 4 * n + 6 * adapters + 12 * layers * d * t + 4 * d * v


def test_which_configs_compile_a_fine_tuning_step():
    assert not is_partitioned(load_config("configs/sft_full_tiny.py", []))  # the plain step, all trained
    for path in ("configs/sft_lora_tiny.py", "configs/sft_qlora_tiny.py", "configs/sft_frozen_tiny.py", "configs/classify_tiny.py"):
        assert is_partitioned(load_config(path, []))
    assert classification_labels(load_config("configs/classify_tiny.py", ["finetune.num_labels=7"])) == 7
    with pytest.raises(UserError, match="set finetune.num_labels"):
        classification_labels(load_config("configs/classify_tiny.py", []))
