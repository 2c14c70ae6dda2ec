"""Does a config fit a TPU slice? Compile it, and if not, compile nearby configs that might.

A fine-tuning config (LoRA / QLoRA, peft.freeze, classification) compiles the step `llm sft`
or `llm classify` runs: the frozen base is an argument of its own, without optimizer state.

Candidates change one thing a user would change: a stronger remat policy, gradient
accumulation (same global batch, smaller micro-batches), fully sharded parameters, or tensor
parallelism; then remat and accumulation together. Each is compiled for real, so "fits" is
the TPU compiler's answer, not an estimate.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Callable, Iterable

import ml_collections

from llm.compile.aot import AbstractSetup, StepCompilation, abstract_setup, compile_step
from llm.config.loading import apply_overrides
from llm.config.validate import validate_config
from llm.errors import UserError
from llm.model.spec import model_spec, param_count
from llm.parallel.mesh import resolve_mesh_shape
from llm.parallel.topology import TpuTopology
from llm.train.flops import flops_per_token

GIB = 2**30
_REMAT_STRENGTH = {"none": 0, "save_matmul": 1, "full": 2}  # the fit search's steps
_NAMED_REMAT_STRENGTH = 1.5  # save_qkv_proj & co. keep fewer activations than save_matmul, more than full


@dataclasses.dataclass(frozen=True)
class FinetuneSplit:
    """What a fine-tuning step trains: its method, the parameters on each side of the
    partition (a quantized tensor counts the values it stands for) and its model FLOPs (with
    LoRA DPO's adapters-off reference, its extra forward pass too)."""

    method: str  # llm.finetune.cost.method_name: "lora r16", "qnf4-lora r8", "frozen 2 pattern(s)", "full"
    task: str
    trainable_params: int
    frozen_params: int
    flops_per_token: float


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One configuration compiled for the slice."""

    overrides: tuple[str, ...]  # config overrides relative to the user's config ("" = as given)
    mesh: dict[str, int]
    compilation: StepCompilation
    hbm_bytes: int
    finetune: FinetuneSplit | None = None  # None: the plain train step, every parameter trained

    @property
    def fits(self) -> bool:
        c = self.compilation
        return not c.out_of_memory and c.total_bytes is not None and c.total_bytes <= self.hbm_bytes


@dataclasses.dataclass(frozen=True)
class CompileReport:
    config_path: str
    topology: TpuTopology
    device_kind: str
    n_params: int
    tokens_per_step: int
    step_flops: float  # model FLOPs of one step, all chips (DESIGN.md formula)
    has_loops: bool  # scanned layers or micro-batches: XLA's FLOP count sees each loop body once
    base: Evaluation
    candidates: tuple[Evaluation, ...]
    hlo_paths: tuple[str, ...]

    @property
    def fits(self) -> bool:
        return self.base.fits


def finetune_split(config: ml_collections.ConfigDict, setup: AbstractSetup) -> FinetuneSplit:
    from llm.finetune.cost import count, method_name, step_flops_per_token

    task = config.finetune.task
    flops = step_flops_per_token(config, setup.spec, setup.state.params, setup.frozen)
    return FinetuneSplit(method_name(config), task, count(setup.state.params), count(setup.frozen), flops)


def evaluate(config: ml_collections.ConfigDict, devices: list, hbm_bytes: int, overrides: tuple[str, ...] = ()) -> Evaluation:
    """Compile `config` with `overrides` applied for the given devices: its fine-tuning step
    (llm.finetune.tasks) when it has a trainable/frozen partition, else the train step."""
    from llm.finetune.tasks import is_partitioned, partition_for_config

    if overrides:
        config = copy.deepcopy(config)
        apply_overrides(config, overrides)
        validate_config(config)
    partition = partition_for_config(config) if is_partitioned(config) else None
    setup = abstract_setup(config, devices, partition)
    split = finetune_split(config, setup) if partition is not None else None
    return Evaluation(overrides, dict(setup.mesh.shape), compile_step(setup), hbm_bytes, split)


def _fits_mesh(config: ml_collections.ConfigDict, n_devices: int, overrides: list[str]) -> bool:
    trial = copy.deepcopy(config)
    try:
        apply_overrides(trial, overrides)
        resolve_mesh_shape(trial.mesh, n_devices)
    except UserError:
        return False
    return True


def candidate_overrides(config: ml_collections.ConfigDict, n_devices: int) -> list[tuple[str, ...]]:
    """Nearby configs worth compiling when `config` does not fit, most promising first."""
    m, batch = config.model, config.data.batch_size
    remats = [p for p, s in _REMAT_STRENGTH.items() if s > _REMAT_STRENGTH.get(m.remat, _NAMED_REMAT_STRENGTH)]
    singles: list[list[str]] = [[f"model.remat={p}"] for p in remats]  # the cheaper recompute first
    data_parallel = {"data": config.mesh.data, "fsdp": config.mesh.fsdp}
    try:
        dp_sizes = resolve_mesh_shape(config.mesh, n_devices)
        dp = dp_sizes[0] * dp_sizes[1]
    except UserError:
        dp = n_devices
    accums = []
    accum = config.train.grad_accum * 2
    while batch % accum == 0 and (batch // accum) % dp == 0 and accum <= 64:
        accums.append(accum)
        accum *= 2
    singles += [[f"train.grad_accum={a}"] for a in accums]
    if data_parallel != {"data": 1, "fsdp": -1} and config.mesh.tensor == 1:
        singles.append(["mesh.data=1", "mesh.fsdp=-1"])
    for tensor in (2, 4, 8):
        if tensor != config.mesh.tensor and m.n_kv_heads % tensor == 0 and m.d_ff % tensor == 0:
            option = [f"mesh.tensor={tensor}", "mesh.data=1", "mesh.fsdp=-1"]
            if _fits_mesh(config, n_devices, option):
                singles.append(option)
    combos = [[f"model.remat={remats[-1]}", f"train.grad_accum={a}"] for a in accums] if remats else []
    return [tuple(c) for c in singles + combos]


def search(
    config: ml_collections.ConfigDict,
    devices: list,
    hbm_bytes: int,
    max_candidates: int,
    max_fitting: int = 2,
    on_result: Callable[[Evaluation], None] | None = None,
) -> list[Evaluation]:
    """Compile candidates in order until `max_fitting` fit or `max_candidates` were tried."""
    results = []
    for overrides in candidate_overrides(config, len(devices))[:max_candidates]:
        try:
            result = evaluate(config, devices, hbm_bytes, overrides)
        except UserError:
            continue  # e.g. a batch the new mesh cannot split: not a candidate after all
        results.append(result)
        if on_result:
            on_result(result)
        if sum(r.fits for r in results) >= max_fitting:
            break
    return results


def build_report(
    config_path: str,
    config: ml_collections.ConfigDict,
    topology: TpuTopology,
    devices: list,
    workdir: Path,
    max_candidates: int,
    on_result: Callable[[Evaluation], None] | None = None,
) -> CompileReport:
    """Compile the config for the slice, search candidates if it does not fit, save the HLO."""
    base = evaluate(config, devices, topology.hbm_bytes)
    if on_result:
        on_result(base)
    candidates = [] if base.fits else search(config, devices, topology.hbm_bytes, max_candidates, on_result=on_result)
    workdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ev in enumerate([base, *candidates]):
        kind = "compiled" if not ev.compilation.out_of_memory else "lowered"
        name = "train_step" if i == 0 else f"train_step.candidate{i}"
        path = workdir / f"{name}.{topology.name}.{kind}.hlo.txt"
        path.write_text(ev.compilation.hlo_text)
        paths.append(str(path))
    spec = model_spec(config, platform="tpu")
    tokens = config.data.batch_size * config.data.seq_len
    per_token = base.finetune.flops_per_token if base.finetune else flops_per_token(spec, config.data.seq_len)
    return CompileReport(
        config_path=config_path,
        topology=topology,
        device_kind=devices[0].device_kind,
        n_params=param_count(spec),
        tokens_per_step=tokens,
        step_flops=per_token * tokens,
        has_loops=bool(config.model.scan_layers or config.train.grad_accum > 1),
        base=base,
        candidates=tuple(candidates),
        hlo_paths=tuple(paths),
    )


def _gib(n: float | None) -> str:
    if n is None:
        return f"{'n/a':>11}"
    for unit, size in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size / 10:
            return f"{n / size:7.2f} {unit}"
    return f"{n:7.0f} B  "


def _count(n: float) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,.0f}"


def _short_reason(error: str) -> str:
    """The compiler's refusal in a few words (its messages run to pages)."""
    if "VmemOom" in error or "memory space vmem" in error:
        return "the compiler ran out of on-chip VMEM for one fusion"
    return error[:100]


def _overrides_text(overrides: Iterable[str]) -> str:
    return " ".join(f"--config.{o}" for o in overrides) or "(as given)"


def format_report(report: CompileReport) -> str:
    t, base = report.topology, report.base
    c = base.compilation
    mesh = " x ".join(f"{k}={v}" for k, v in base.mesh.items())
    verdict = "fits" if base.fits else "does NOT fit"
    if c.out_of_memory:
        verdict += " (the compiler ran out of memory; temporaries are its figure)"
    split = base.finetune
    lines = [
        f"{report.config_path} on {t.name}: {t.chips} chips ({report.device_kind}, topology {t.topology}), mesh {mesh}",
        f"  model {_count(report.n_params)} parameters, {report.tokens_per_step:,} tokens per step",
    ]
    if split is not None:
        total_params = split.trainable_params + split.frozen_params
        lines.append(
            f"  fine-tuning ({split.task}, {split.method}): {_count(split.trainable_params)} trainable "
            f"({100 * split.trainable_params / max(total_params, 1):.2f}%), {_count(split.frozen_params)} frozen "
            "(no gradient, no optimizer state)"
        )
        params = [f"    frozen params    {_gib(c.frozen_bytes)}", f"    trainable params {_gib(c.params_bytes)}"]
    else:
        params = [f"    parameters       {_gib(c.params_bytes)}"]
    lines += [
        f"  per-device memory (HBM {t.hbm_bytes / GIB:.2f} GiB per chip):",
        *params,
        f"    optimizer state  {_gib(c.opt_state_bytes)}"
        + (f"  (+ {_gib(c.host_opt_state_bytes)} in host memory: optim.offload_state)" if c.host_opt_state_bytes else ""),
        f"    batch            {_gib(c.batch_bytes)}",
        f"    temporaries      {_gib(c.temp_bytes)}  (activations, gradients, collective buffers)",
        f"    total            {_gib(c.total_bytes)}  -> {verdict}",
    ]
    if c.compiler_peak_bytes:
        lines.append(f"    compiler's peak  {_gib(c.compiler_peak_bytes)}")
    if c.error and c.temp_bytes is None:
        lines.append(f"  compiler: {c.error}")
    seconds = report.step_flops / (t.chips * t.peak_flops)
    frozen_note = "; frozen weights get no weight gradient" if split is not None and split.frozen_params else ""
    lines.append(
        f"  step FLOPs {report.step_flops:.3e} (model FLOPs, {_count(report.step_flops / report.tokens_per_step)} "
        f"per token{frozen_note}); at 50% MFU a step takes {2 * seconds:.3g} s on {t.chips} chips"
    )
    if c.hlo_flops_per_device is not None and not report.has_loops:
        lines.append(f"  XLA's count: {c.hlo_flops_per_device * t.chips:.3e} FLOPs (with the optimizer and remat)")
    lines.append(f"  HLO: {report.hlo_paths[0]}")
    if report.candidates:
        lines.append("  candidates (each compiled):")
        for ev in report.candidates:
            state = "fits" if ev.fits else "does not fit"
            if ev.compilation.error and ev.compilation.total_bytes is None:
                state += f" ({_short_reason(ev.compilation.error)})"
            lines.append(f"    {_overrides_text(ev.overrides):60s} total {_gib(ev.compilation.total_bytes)}  {state}")
        fitting = [ev for ev in report.candidates if ev.fits]
        if fitting:
            lines.append(f"  to fit, add: {_overrides_text(fitting[0].overrides)}")
        else:
            lines.append(
                f"  none of the {len(report.candidates)} candidates tried fits: use a larger slice, a smaller "
                "batch or sequence, or raise --max-candidates"
            )
    return "\n".join(lines)


def _evaluation_json(ev: Evaluation) -> dict:
    c = ev.compilation
    return {
        "overrides": [f"--config.{o}" for o in ev.overrides],
        "mesh": ev.mesh,
        "fits": ev.fits,
        "per_device_bytes": c.total_bytes,
        "params_bytes": c.params_bytes,
        "frozen_bytes": c.frozen_bytes,
        "opt_state_bytes": c.opt_state_bytes,
        "host_opt_state_bytes": c.host_opt_state_bytes,
        "batch_bytes": c.batch_bytes,
        "temp_bytes": c.temp_bytes,
        "compiler_peak_bytes": c.compiler_peak_bytes,
        "hlo_flops_per_device": c.hlo_flops_per_device,
        "out_of_memory": c.out_of_memory,
        "error": c.error,
    }


def report_json(report: CompileReport) -> dict:
    """The --json file: `fits`, `per_device_bytes`, `hbm_bytes`, `step_flops` and the details."""
    base = _evaluation_json(report.base)
    return {
        "config": report.config_path,
        "topology": report.topology.name,
        "topology_desc": report.topology.topology,
        "chips": report.topology.chips,
        "device_kind": report.device_kind,
        "fits": report.fits,
        "per_device_bytes": report.base.compilation.total_bytes,
        "hbm_bytes": report.topology.hbm_bytes,
        "step_flops": report.step_flops,
        "tokens_per_step": report.tokens_per_step,
        "n_params": report.n_params,
        "finetune": dataclasses.asdict(report.base.finetune) if report.base.finetune else None,
        "memory": base,
        "candidates": [_evaluation_json(ev) for ev in report.candidates],
        "hlo_paths": list(report.hlo_paths),
    }


def write_json(report: CompileReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report_json(report), indent=2))
