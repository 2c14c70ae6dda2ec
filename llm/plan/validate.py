"""`llm plan --validate`: short real steps on this machine against what `llm plan` predicts for
`cpu` with the analytic memory model; `--calibrate` prints the MFU table rows the same runs measure.

Step time is measured by the process's CPU time over the steps after the first, divided by the
cores (llm.plan.cpu: the step as the machine alone would run it; on a machine shared with other
jobs the wall clock measures the neighbours), and printed beside the wall clock. Memory: the
compiled step's buffers as XLA:CPU allocates them (arguments + outputs - donated aliases +
temporaries, cost.json's peak_memory_bytes): JAX reports no allocator statistics for CPU
devices, and the process RSS mixes the step's buffers with the compiler's heap and the runtime
(hundreds of MiB against a 46 MiB step for tiny), so it cannot measure a step. Predicting the
memory with the local CPU compile would reproduce that figure exactly, so the analytic model is
what is checked.
"""

from __future__ import annotations

import dataclasses
import os

from llm.cpu.features import host_bf16_engine
from llm.config.loading import load_config
from llm.plan.cpu import cores, cpu_peak_flops, measure_steps
from llm.plan.hardware import parse_hardware
from llm.plan.methods import method_config
from llm.plan.mfu import read_table
from llm.plan.planner import Memories, plan_row
from llm.plan.prices import read_prices


@dataclasses.dataclass(frozen=True)
class Check:
    config: str
    method: str
    predicted_step_s: float
    measured_step_s: float  # CPU time / cores (see the module docstring)
    wall_step_s: float
    predicted_bytes: int
    measured_bytes: int
    peak_flops: float  # measured just before the run (what the prediction used)
    mfu: float  # the MFU table's, used by the prediction
    measured_mfu: float
    d_model: int

    @property
    def step_error(self) -> float:
        return self.predicted_step_s / self.measured_step_s - 1

    @property
    def memory_error(self) -> float:
        return self.predicted_bytes / self.measured_bytes - 1

    def as_json(self) -> dict:
        return {**dataclasses.asdict(self), "step_error": self.step_error, "memory_error": self.memory_error}


def check_one(name: str, method: str, steps: int) -> Check:
    """Predict, then run `steps` timed steps of configs/NAME.py fine-tuned with `method`."""
    base = load_config(f"configs/{name}.py")
    peak = cpu_peak_flops()
    row = plan_row(base, parse_hardware("cpu"), method, 1, read_table(), read_prices(), Memories("analytic"), peak)
    measured = measure_steps(method_config(base, method), steps)
    return Check(name, method, row.time.step_s, measured.alone_s, measured.wall_s, row.fit.memory.total,
                 measured.memory_bytes, peak, row.mfu.mfu, measured.model_flops / measured.alone_s / peak, base.model.d_model)


def validate(configs: list[str], methods: list[str], steps: int = 4) -> list[Check]:
    return [check_one(name, method, steps) for name in configs for method in methods]


def mfu_rows(results: list[Check], date: str, command: str) -> list[dict]:
    """The MFU table's cpu rows these runs measured (`llm plan --calibrate`)."""
    return [
        {"hardware": "cpu", "cpu_engine": host_bf16_engine() or "none", "method": r.method, "mfu": round(r.measured_mfu, 3),
         "d_model": r.d_model, "status": "measured",
         "date": date, "command": command,
         "note": f"configs/{r.config}.py, {r.measured_step_s:.3f} s a step by CPU time ({r.wall_step_s:.3f} s wall) on {cores()} shared cores",
         "kept_memory": os.environ.get("LLM_CPU_KEEP_MEMORY", "1") != "0"}
        for r in results
    ]


def format_validation(results: list[Check]) -> str:
    lines = [
        "predicted (llm plan, cpu, analytic memory) vs measured (short real runs here; step: CPU time / cores)",
        f"{'config':8s} {'method':7s} {'step pred':>10s} {'measured':>10s} {'error':>7s} {'(wall)':>9s} "
        f"{'memory pred':>12s} {'measured':>11s} {'error':>7s}  MFU table / measured, peak",
    ]
    for r in results:
        lines.append(
            f"{r.config:8s} {r.method:7s} {r.predicted_step_s:9.3f}s {r.measured_step_s:9.3f}s {100 * r.step_error:+6.1f}% "
            f"{r.wall_step_s:8.3f}s {r.predicted_bytes / 2**20:8.1f} MiB {r.measured_bytes / 2**20:7.1f} MiB "
            f"{100 * r.memory_error:+6.1f}%  {100 * r.mfu:.0f}% / {100 * r.measured_mfu:.0f}% of {r.peak_flops / 1e9:.0f} GFLOP/s"
        )
    lines.append("measured memory: the compiled step's buffers (XLA:CPU allocates exactly these; see llm.plan.validate)")
    return "\n".join(lines)
