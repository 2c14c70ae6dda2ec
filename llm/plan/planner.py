"""One plan row per hardware choice and method: does it fit (and the smallest change that
does), memory by part, step FLOPs and time, wall-clock, chip-hours and cost for a token budget.

Fitting follows `llm compile`: the config as given, then llm.compile.report.candidate_overrides
in its order (stronger remat, gradient accumulation, full sharding, tensor parallelism, remat with
accumulation), each judged by the analytic model and, where a compiler exists, confirmed by a
compile. When nothing fits on the hardware asked for, the row is planned on the smallest larger
slice (or GPU count) of the same chip that fits, and says so.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from typing import Callable

import ml_collections

from llm.cpu.features import host_bf16_engine
from llm.config.loading import apply_overrides
from llm.config.validate import validate_config
from llm.errors import UserError
from llm.plan.hardware import GPUS, Hardware, parse_hardware
from llm.plan.memory import Memory, analytic_memory
from llm.plan.methods import method_config
from llm.plan.mfu import MfuRow, lookup
from llm.plan.prices import Prices
from llm.plan.state import AbstractState, abstract_state
from llm.plan.timing import StepTime, step_time
from llm.parallel.topology import GENERATIONS

_UNITS = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


def parse_tokens(text: str) -> int:
    """`50M`, `1.5B`, `1T`, `2e9`, `1000000` -> a token count."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([KMBGT]?)\s*", str(text).upper())
    if not match or float(match.group(1)) * _UNITS[match.group(2)] < 1:
        raise UserError(f"--tokens {text!r} is not a token count; write e.g. 50M, 1.5B, 1T or 2e9")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


@dataclasses.dataclass(frozen=True)
class Fit:
    config: ml_collections.ConfigDict
    overrides: tuple[str, ...]
    state: AbstractState
    memory: Memory  # the figure the verdict used (compiled where a compiler exists)
    analytic: Memory

    def fits(self, hw: Hardware) -> bool:
        return self.memory.total <= hw.hbm_bytes


@dataclasses.dataclass(frozen=True)
class PlanRow:
    asked: Hardware  # the hardware the user listed
    hardware: Hardware  # where it is planned (a larger slice when nothing fits on `asked`)
    method: str
    method_label: str
    fits_as_given: bool
    as_given: Memory  # the config as given on `asked`
    fit: Fit | None  # None: nothing tried fits, not even on larger hardware
    time: StepTime | None
    mfu: MfuRow
    peak_flops: float
    tokens: int
    price_on_demand: float
    price_spot: float
    note: str = ""

    @property
    def tokens_per_step(self) -> int:
        c = self.fit.config if self.fit else None
        return c.data.batch_size * c.data.seq_len if c else 0

    @property
    def steps(self) -> int:
        return math.ceil(self.tokens / self.tokens_per_step) if self.fit else 0

    @property
    def wall_s(self) -> float:
        return self.steps * self.time.step_s if self.time else math.inf

    @property
    def chip_hours(self) -> float:
        return self.wall_s / 3600 * self.hardware.chips

    @property
    def cost(self) -> float:
        return self.chip_hours * self.price_on_demand

    @property
    def cost_spot(self) -> float:
        return self.chip_hours * self.price_spot

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.time.step_s if self.time else 0.0


def _platform(hw: Hardware) -> str:
    return hw.kind


def with_overrides(config: ml_collections.ConfigDict, overrides: tuple[str, ...]) -> ml_collections.ConfigDict:
    """A validated copy of `config` with `overrides` applied (`config` itself when there are none)."""
    if not overrides:
        return config
    out = copy.deepcopy(config)
    apply_overrides(out, overrides)
    validate_config(out)
    return out


class Memories:
    """Memory figures for (config, hardware, overrides), compiled where allowed and possible."""

    def __init__(self, mode: str, on_compile: Callable[[str], None] | None = None):
        self.mode = mode  # auto | analytic
        self.on_compile = on_compile
        self.notes: list[str] = []

    def evaluate(self, config: ml_collections.ConfigDict, hw: Hardware, overrides: tuple[str, ...] = ()) -> Fit:
        cfg = with_overrides(config, overrides)
        state = abstract_state(cfg, hw.chips, _platform(hw))
        analytic = analytic_memory(cfg, state, _platform(hw))
        memory = analytic
        if self.mode != "analytic" and hw.compiler and not (hw.kind == "cpu" and analytic.total > 2 * hw.hbm_bytes):
            from llm.plan.compiled import compiled_memory

            if self.on_compile:
                self.on_compile(f"compiling for {hw.name} {' '.join(overrides) or '(as given)'}")
            compiled, why = compiled_memory(config, hw, overrides)
            if compiled is not None:
                memory = compiled
            elif why not in self.notes:
                self.notes.append(f"{hw.name}: analytic memory ({why})")
        return Fit(cfg, overrides, state, memory, analytic)


def find_fit(config: ml_collections.ConfigDict, hw: Hardware, memories: Memories, first: Fit | None = None) -> Fit | None:
    """The config as given if it fits `hw`, else the first candidate change that does."""
    from llm.compile.report import candidate_overrides

    base = first or memories.evaluate(config, hw)
    if base.fits(hw):
        return base
    for overrides in candidate_overrides(config, hw.chips):
        try:
            cfg = with_overrides(config, overrides)
            analytic = analytic_memory(cfg, abstract_state(cfg, hw.chips, _platform(hw)), _platform(hw))
        except UserError:
            continue
        if analytic.total > hw.hbm_bytes:
            continue
        fit = memories.evaluate(config, hw, overrides)
        if fit.fits(hw):
            return fit
    return None


def larger(hw: Hardware) -> list[Hardware]:
    """Larger choices of the same chip, smallest first."""
    if hw.kind == "tpu":
        gen = GENERATIONS[hw.chip]
        names = [f"{gen.name}-{s}" for s in gen.sizes if s // gen.cores_per_chip > hw.chips]
    elif hw.kind == "gpu":
        per_node = GPUS[hw.chip].gpus_per_node
        names = [f"{hw.chip}x{n}" for n in (1, 2, 4, 8, 16, 32, 64, 128, 256) if n > hw.chips and (n <= per_node or n % per_node == 0)]
    else:
        names = []
    return [parse_hardware(n) for n in names]


def plan_row(
    config: ml_collections.ConfigDict, hw: Hardware, method: str, tokens: int, mfu_rows: list[MfuRow],
    prices: Prices, memories: Memories, peak: float | None = None,
) -> PlanRow:
    """One row (see the module docstring); `peak`: the per-chip FLOP/s to use (cpu: measured)."""
    from llm.finetune.cost import method_name

    cfg = method_config(config, method)
    try:
        first = memories.evaluate(cfg, hw)
    except UserError as err:
        raise UserError(f"{method} on {hw.name}: {err}") from None
    fit, planned_on, note = find_fit(cfg, hw, memories, first), hw, ""
    if fit is None:
        for bigger in larger(hw)[:6]:
            try:
                fit = find_fit(cfg, bigger, Memories("analytic"))
            except UserError:
                continue
            if fit is not None:
                planned_on, note = bigger, f"does not fit {hw.name}; planned on {bigger.name} (analytic memory)"
                break
        else:
            note = f"does not fit {hw.name}" + (" nor any larger slice tried" if hw.kind != "cpu" else " (this machine's memory)")
    mfu = lookup(mfu_rows, planned_on.chip, planned_on.kind, method, cfg.model.d_model, host_bf16_engine() or "none")
    if planned_on.kind != "cpu":
        peak = planned_on.peak_flops
    elif peak is None:
        from llm.plan.cpu import cpu_peak_flops

        peak = cpu_peak_flops()
    timing = step_time(fit.config, fit.state, planned_on, mfu, peak) if fit else None
    return PlanRow(
        hw, planned_on, method, method_name(cfg), first.fits(hw), first.memory, fit, timing, mfu, peak, tokens,
        prices.price(planned_on.chip, "on_demand"), prices.price(planned_on.chip, "spot"), note,
    )
