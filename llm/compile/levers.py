"""`llm compile --levers`: the per-chip memory of one config under each memory lever a user can
pull without changing the model or the batch: every remat policy, and the optimizer state in
host memory (optim.offload_state).

On a TPU slice each lever is compiled by libtpu (the compiler's figure). For a GPU there is no
GPU compiler on a CPU machine, so the figure is llm.plan.memory's analytic model, and says so.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import ml_collections

from llm.errors import UserError
from llm.model.decoder import REMAT_POLICIES
from llm.plan.hardware import Hardware
from llm.plan.memory import Memory
from llm.plan.planner import with_overrides

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class LeverRow:
    overrides: tuple[str, ...]  # () = the config as given
    memory: Memory

    @property
    def label(self) -> str:
        return " ".join(self.overrides) or "as given"


def lever_overrides(config: ml_collections.ConfigDict) -> list[tuple[str, ...]]:
    """The config as given, each other remat policy, and (if not on already) offloading the
    optimizer state with the config's own remat."""
    remats = ["none", *REMAT_POLICIES]
    rows: list[tuple[str, ...]] = [()]
    rows += [(f"model.remat={p}",) for p in remats if p != config.model.remat]
    if not config.optim.offload_state:
        rows.append(("optim.offload_state=true",))
    return rows


def lever_memory(config: ml_collections.ConfigDict, hw: Hardware) -> Memory:
    """Per-chip memory of `config` on `hw`: compiled for a TPU slice, analytic for GPUs."""
    if hw.kind == "gpu":
        from llm.plan.memory import analytic_memory
        from llm.plan.state import abstract_state

        return analytic_memory(config, abstract_state(config, hw.chips, "gpu"), "gpu")
    from llm.plan.compiled import compiled_memory

    memory, why = compiled_memory(config, hw)
    if memory is None:
        raise UserError(f"llm compile --levers on {hw.name}: {why}")
    return memory


def lever_rows(
    config: ml_collections.ConfigDict, hw: Hardware, overrides: list[tuple[str, ...]],
    on_row: Callable[[LeverRow], None] | None = None,
) -> list[LeverRow]:
    rows = []
    for o in overrides:
        row = LeverRow(o, lever_memory(with_overrides(config, o), hw))
        rows.append(row)
        if on_row:
            on_row(row)
    return rows


def _gib(n: int | None) -> str:
    return f"{n / GIB:8.2f}" if n is not None else f"{'n/a':>8}"


def format_levers(config_path: str, hw_name: str, hbm_bytes: int, rows: list[LeverRow], remat: str) -> str:
    source = rows[0].memory.source if rows else ""
    lines = [
        f"{config_path} on {hw_name}: per-chip memory by lever, GiB ({source}; HBM {hbm_bytes / GIB:.2f} GiB per chip; "
        f"as given: model.remat={remat})",
        f"  {'lever':<46} {'params':>8} {'optim':>8} {'host':>8} {'other':>8} {'total':>8}  fits",
    ]
    for r in rows:
        m = r.memory
        other = m.total - m.params - m.frozen - m.optimizer
        lines.append(
            f"  {r.label:<46} {_gib(m.params + m.frozen)} {_gib(m.optimizer)} {_gib(m.host)} {_gib(other)} {_gib(m.total)}  "
            f"{'yes' if m.total <= hbm_bytes else 'no'}"
        )
    lines.append("  params: parameters (and a frozen base); optim: optimizer state in device memory; host: in host memory "
                 "(optim.offload_state); other: activations, gradients, buffers")
    return "\n".join(lines)


def write_levers_json(path: Path, config_path: str, hw_name: str, hbm_bytes: int, rows: list[LeverRow]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "config": config_path, "hardware": hw_name, "hbm_bytes": hbm_bytes,
        "levers": [{"overrides": [f"--config.{o}" for o in r.overrides], "source": r.memory.source,
                    "per_device_bytes": r.memory.total, "params_bytes": r.memory.params + r.memory.frozen,
                    "opt_state_bytes": r.memory.optimizer, "host_opt_state_bytes": r.memory.host,
                    "fits": r.memory.total <= hbm_bytes} for r in rows],
    }, indent=2) + "\n")
