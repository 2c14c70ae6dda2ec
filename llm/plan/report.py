"""`llm plan`'s table, its comparison of each method with full fine-tuning, the assumptions
under it, and the --json form."""

from __future__ import annotations

import dataclasses
import math

from llm.plan.planner import PlanRow
from llm.plan.prices import Prices

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Plan:
    config_path: str
    tokens: int
    rows: tuple[PlanRow, ...]
    prices: Prices
    notes: tuple[str, ...] = ()


def _gib(n: float | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f}"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.0f} ms"


def _count(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def _money(x: float) -> str:
    if not math.isfinite(x):
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:,.2f}"


def _fit_text(row: PlanRow) -> str:
    if row.fits_as_given:
        return "yes"
    if row.fit is None:
        return "no"
    if row.hardware is not row.asked and row.hardware.name != row.asked.name:
        extra = f" + {' '.join(row.fit.overrides)}" if row.fit.overrides else ""
        return f"no: use {row.hardware.name}{extra}"
    return "no: add " + " ".join(f"--config.{o}" for o in row.fit.overrides)


def full_row(plan: Plan, row: PlanRow) -> PlanRow | None:
    return next((r for r in plan.rows if r.asked.name == row.asked.name and r.method == "full"), None)


def format_plan(plan: Plan) -> str:
    header = ["hardware", "method", "fits", "params", "frozen", "optim", "activ", "temps", "total GiB", "memory from",
              "step FLOPs", "step", "tokens/s", "wall-clock", "chip-h", f"cost {plan.prices.currency}", "spot", "vs full"]
    lines = [f"{plan.config_path}: {_count(plan.tokens)} tokens; memory per device (GiB)", ""]
    table = [header]
    for row in plan.rows:
        fit = row.fit
        m = fit.memory if fit else row.as_given
        full = full_row(plan, row)
        ratio = f"{row.cost / full.cost:.2f}x" if full and full.time and row.time and full.cost > 0 else "-"
        where = row.hardware.name if row.hardware.name != row.asked.name else row.asked.name
        table.append([
            where if where == row.asked.name else f"{row.asked.name}->{where}", row.method_label, _fit_text(row),
            _gib(m.params), _gib(m.frozen), _gib(m.optimizer), _gib(m.activations), _gib(m.temporaries),
            f"{_gib(m.total)}/{row.hardware.hbm_bytes / GIB:.0f}", m.source.split(",")[0].replace("compiled (", "").rstrip(")"),
            f"{row.time.step_flops:.3g}" if row.time else "-", _duration(row.time.step_s) if row.time else "-",
            f"{row.tokens_per_s:,.0f}" if row.time else "-", _duration(row.wall_s), f"{row.chip_hours:,.1f}" if row.time else "-",
            _money(row.cost), _money(row.cost_spot), ratio,
        ])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, r in enumerate(table):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [""] + savings(plan) + [""] + assumptions(plan)
    return "\n".join(lines)


def savings(plan: Plan) -> list[str]:
    """Where each method's saving against full fine-tuning comes from, per hardware."""
    out = []
    for row in plan.rows:
        full = full_row(plan, row)
        if row.method == "full" or full is None or not (row.time and full.time and row.fit and full.fit):
            continue
        mem, fmem = row.fit.memory, full.fit.memory
        chips = "" if row.hardware.chips == full.hardware.chips else f"; chips {row.hardware.chips} vs {full.hardware.chips}"
        out.append(
            f"{row.asked.name} {row.method} vs full: cost {row.cost / full.cost:.2f}x = step FLOPs "
            f"{row.time.step_flops / full.time.step_flops:.2f}x (frozen weights: no weight-gradient matmuls) "
            f"x MFU {full.mfu.mfu / row.mfu.mfu:.2f}x (full {full.mfu.mfu:.0%}, {row.method} {row.mfu.mfu:.0%})"
            f"{chips}; optimizer state {mem.optimizer / max(fmem.optimizer, 1):.3f}x, memory per device {mem.total / max(fmem.total, 1):.2f}x"
        )
    return ["Savings against full fine-tuning:", *out] if out else []


def assumptions(plan: Plan) -> list[str]:
    lines = ["Assumptions:"]
    seen = set()
    for row in plan.rows:
        key = (row.hardware.chip, row.method)
        if key in seen:
            continue
        seen.add(key)
        m = row.mfu
        extra = f", {m.note}" if m.note else ""
        peak = f"peak {row.peak_flops / 1e12:.3g} TFLOP/s per chip" + (" (measured now, matmul)" if row.hardware.kind == "cpu" else "")
        lines.append(f"- {row.hardware.chip} {row.method}: MFU {m.mfu:.0%} ({m.status}, {m.date}: {m.command}){extra}; {peak}")
    links = {r.hardware.name: r.hardware for r in plan.rows if r.hardware.link_bytes_s}
    if links:
        lines.append("- communication: FSDP all-gathers (forward, backward, remat) and gradient reduce-scatters per micro-batch, "
                     "ring model, overlapped with compute (llm.plan.timing); links: "
                     + ", ".join(f"{n} {h.link_name} {h.link_bytes_s / 1e9:.0f} GB/s/chip" for n, h in links.items()))
    lines.append(f"- prices: {plan.prices.path} dated {plan.prices.date} ({plan.prices.currency} per chip-hour, on-demand; spot column: spot/preemptible)"
                 + (f"; {plan.prices.source}" if plan.prices.source else ""))
    lines.append("- memory: 'compiled' = the step compiled for that target (libtpu for TPU slices, XLA:CPU here); "
                 "'analytic' = llm.plan.memory (GPUs, or larger slices tried when nothing fits)")
    lines += [f"- {n}" for n in plan.notes]
    return lines


def _memory_json(m) -> dict:
    return {"params": m.params, "frozen": m.frozen, "optimizer": m.optimizer, "activations": m.activations,
            "temporaries": m.temporaries, "batch": m.batch, "total": m.total, "source": m.source}


def plan_json(plan: Plan) -> dict:
    rows = []
    for row in plan.rows:
        full = full_row(plan, row)
        rows.append({
            "hardware": row.asked.name, "planned_on": row.hardware.name, "chips": row.hardware.chips,
            "hbm_bytes": row.hardware.hbm_bytes, "method": row.method, "method_label": row.method_label,
            "fits_as_given": row.fits_as_given, "fits": row.fit is not None,
            "change": [f"--config.{o}" for o in row.fit.overrides] if row.fit else None, "note": row.note,
            "memory": _memory_json(row.fit.memory if row.fit else row.as_given),
            "memory_analytic": _memory_json(row.fit.analytic) if row.fit else None,
            "mesh": row.fit.state.mesh if row.fit else None,
            "step_flops": row.time.step_flops if row.time else None,
            "step_s": row.time.step_s if row.time else None,
            "compute_s": row.time.compute_s if row.time else None, "comm_s": row.time.comm_s if row.time else None,
            "tokens_per_step": row.tokens_per_step, "steps": row.steps, "tokens_per_s": row.tokens_per_s,
            "wall_s": row.wall_s if row.time else None, "chip_hours": row.chip_hours if row.time else None,
            "cost": row.cost if row.time else None, "cost_spot": row.cost_spot if row.time else None,
            "cost_ratio_to_full": row.cost / full.cost if full and full.time and row.time and full.cost else None,
            "time_ratio_to_full": row.time.step_s / full.time.step_s * (full.tokens_per_step / row.tokens_per_step)
            if full and full.time and row.time else None,
            "mfu": dataclasses.asdict(row.mfu), "peak_flops": row.peak_flops,
        })
    return {"config": plan.config_path, "tokens": plan.tokens, "currency": plan.prices.currency,
            "prices": {"path": plan.prices.path, "date": plan.prices.date}, "rows": rows, "notes": list(plan.notes)}
