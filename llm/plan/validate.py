"""`llm plan --validate`: short real fine-tuning runs on this machine (llm bench finetune's runs:
synthetic tokens, the first step compiles and is not timed) against what `llm plan` predicts
for `cpu` with the analytic memory model.

Measured step time: the training loop's, over the steps after the first. Measured memory: the
compiled step's buffers as XLA:CPU allocates them (arguments + outputs - donated aliases +
temporaries, cost.json's peak_memory_bytes): JAX reports no allocator statistics for CPU devices,
and the process RSS mixes the step's buffers with the compiler's heap and the runtime (hundreds of
MiB against a 46 MiB step for tiny), so it cannot measure a step. Predicting the memory with the
local CPU compile instead would reproduce that figure exactly; the analytic model is what is checked.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from llm.config.loading import load_config
from llm.plan.hardware import parse_hardware
from llm.plan.mfu import read_table
from llm.plan.planner import Memories, plan_row
from llm.plan.prices import read_prices


@dataclasses.dataclass(frozen=True)
class Check:
    config: str
    method: str
    predicted_step_s: float
    measured_step_s: float
    predicted_bytes: int
    measured_bytes: int
    peak_flops: float
    mfu: float

    @property
    def step_error(self) -> float:
        return self.predicted_step_s / self.measured_step_s - 1

    @property
    def memory_error(self) -> float:
        return self.predicted_bytes / self.measured_bytes - 1

    def as_json(self) -> dict:
        return {**dataclasses.asdict(self), "step_error": self.step_error, "memory_error": self.memory_error}


def check_one(name: str, method: str, steps: int, workdir: Path) -> Check:
    """Predict, then run `steps` real steps of configs/NAME.py fine-tuned with `method`."""
    from llm.bench.finetune import bench_config
    from llm.finetune.cost import read_cost
    from llm.finetune.sft import run_sft
    from llm.train.flops import device_peak_flops

    config = load_config(f"configs/{name}.py")
    cpu = parse_hardware("cpu")
    peak, _ = device_peak_flops()
    row = plan_row(config, cpu, method, 1, read_table(), read_prices(), Memories("analytic"), peak)
    run_sft(bench_config(config, method, steps), workdir / f"{name}-{method}", overwrite=True)
    cost = read_cost(workdir / f"{name}-{method}")
    return Check(name, method, row.time.step_s, float(cost["step_time"]), row.fit.memory.total,
                 int(cost["peak_memory_bytes"]), peak, row.mfu.mfu)


def validate(configs: list[str], methods: list[str], steps: int = 4) -> list[Check]:
    with tempfile.TemporaryDirectory() as tmp:
        return [check_one(name, method, steps, Path(tmp)) for name in configs for method in methods]


def format_validation(results: list[Check]) -> str:
    lines = [
        "predicted (llm plan, cpu, analytic memory) vs measured (short real runs here)",
        f"{'config':10s} {'method':7s} {'step pred':>10s} {'measured':>10s} {'error':>7s} {'memory pred':>12s} {'measured':>10s} {'error':>7s}  MFU used, peak",
    ]
    for r in results:
        lines.append(
            f"{r.config:10s} {r.method:7s} {r.predicted_step_s:9.3f}s {r.measured_step_s:9.3f}s {100 * r.step_error:+6.1f}% "
            f"{r.predicted_bytes / 2**20:8.1f} MiB {r.measured_bytes / 2**20:6.1f} MiB {100 * r.memory_error:+6.1f}%  "
            f"{100 * r.mfu:.0f}% of {r.peak_flops / 1e9:.0f} GFLOP/s"
        )
    lines.append("measured memory: the compiled step's buffers (XLA:CPU allocates exactly these; see llm.plan.validate)")
    return "\n".join(lines)
