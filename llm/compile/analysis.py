"""XLA's own figures for a compiled step: FLOPs and per-device memory, read one way everywhere
(`llm compile` on a described TPU slice, the fine-tuning cost report on the run's devices)."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class CompiledFigures:
    """Per device; None where this backend does not report the figure."""

    flops: float | None  # XLA's count; loop bodies (scanned layers) are counted once
    argument_bytes: int | None
    temp_bytes: int | None  # activations, gradients, collective buffers, workspace
    total_bytes: int | None  # arguments + outputs - donated aliases + temporaries
    peak_bytes: int | None  # the compiler's own peak estimate, where it gives one


def compiled_figures(compiled: Any) -> CompiledFigures:
    """The figures of a `jax.stages.Compiled` (its cost and memory analyses)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost["flops"]) if cost and "flops" in cost else None
    mem = compiled.memory_analysis()
    if mem is None:
        return CompiledFigures(flops, None, None, None, None)
    total = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
    peak = getattr(mem, "peak_memory_in_bytes", None)
    return CompiledFigures(flops, int(mem.argument_size_in_bytes), int(mem.temp_size_in_bytes), int(total), peak)
