"""The MFU table (configs/plan_mfu.json): this stack's measured MFU per hardware class and
method, each row with its date, the command that produced it and whether it was measured or
assumed. `llm plan` divides step FLOPs by chips x peak x this MFU.

Rows name a chip (v5e, v5p, v6e, h100, h200, a100, cpu) or a kind (tpu, gpu). A row may carry the
d_model it was measured at: on a CPU, MFU depends on the matmul sizes (tiny at d_model 128 reaches
about a third of what small at 512 does), so rows of one hardware and method form a curve in
log d_model, clamped at its ends. CPUs differ in how close a small model gets to their matmul peak
(tiny: 42% on the AMD EPYC dev VM, 30% on the Sapphire Rapids one), so cpu rows name the bf16
engine of the CPU they were measured on (llm.cpu.features), and a plan uses the rows of the host's
engine, else those listed first. A method without its own curve takes the full-training curve
times its measured ratio to full at the nearest d_model where both were measured (bench finetune
on one model); with no row at all, the full-training figure.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from llm.errors import UserError

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "configs" / "plan_mfu.json"


@dataclasses.dataclass(frozen=True)
class MfuRow:
    hardware: str
    method: str
    mfu: float
    status: str  # measured | assumed
    date: str
    command: str
    d_model: int = 0  # 0: any width
    note: str = ""
    cpu_engine: str = ""  # cpu rows: the bf16 engine of the CPU measured ("amx", "avx512_bf16", "none"); "" = any
    # cpu rows: measured with llm's host-runtime settings (llm.cpu.runtime: freed memory kept), as
    # `llm` runs by default; False: with glibc's defaults (LLM_CPU_KEEP_MEMORY=0), whose steps
    # page-fault their temporaries back in (tiny's step took ~30% longer on the Sapphire Rapids VM)
    kept_memory: bool = False


def read_table(path: str | Path = DEFAULT_PATH) -> list[MfuRow]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"MFU table {str(path)!r} does not exist; restore configs/plan_mfu.json from the repository")
    rows = []
    for i, row in enumerate(json.loads(path.read_text())["rows"]):
        missing = [k for k in ("hardware", "method", "mfu", "status", "date", "command") if k not in row]
        if missing:
            raise UserError(f"MFU table {str(path)!r} row {i} has no {missing[0]!r}; every row needs hardware, method, mfu, status, date, command")
        if not 0 < float(row["mfu"]) <= 1:
            raise UserError(f"MFU table {str(path)!r} row {i}: mfu {row['mfu']} is not in (0, 1]")
        rows.append(MfuRow(**row))
    return rows


def _curve(rows: list[MfuRow], d_model: int) -> float:
    """Interpolate in log d_model between the rows (clamped at the ends)."""
    pts = sorted((r.d_model, r.mfu) for r in rows)
    if len(pts) == 1 or not pts[0][0]:
        return pts[0][1]
    if d_model <= pts[0][0]:
        return pts[0][1]
    for (d0, m0), (d1, m1) in zip(pts, pts[1:]):
        if d_model <= d1:
            t = (math.log(d_model) - math.log(d0)) / (math.log(d1) - math.log(d0))
            return m0 + t * (m1 - m0)
    return pts[-1][1]


def for_cpu_engine(rows: list[MfuRow], engine: str) -> list[MfuRow]:
    """The table with only one CPU's cpu rows: those measured on a CPU with `engine`, else
    those of the engine listed first (rows naming no engine are always kept)."""
    engines = [r.cpu_engine for r in rows if r.hardware == "cpu" and r.cpu_engine]
    chosen = engine if engine in engines else (engines[0] if engines else "")
    return [r for r in rows if r.hardware != "cpu" or r.cpu_engine in ("", chosen)]


def lookup(rows: list[MfuRow], chip: str, kind: str, method: str, d_model: int = 0, cpu_engine: str = "none") -> MfuRow:
    """The MFU for `method` on `chip` at `d_model` (see the module docstring), as a row whose
    status, date and command name every row it came from; cpu rows are those of `cpu_engine`
    (for_cpu_engine)."""
    rows = for_cpu_engine(rows, cpu_engine)
    for hw in (chip, kind):
        full = [r for r in rows if r.hardware == hw and r.method == "full"]
        own = [r for r in rows if r.hardware == hw and r.method == method]
        if not own and not full:
            continue
        if not full or method == "full" or (own and (len(own) > 1 or not own[0].d_model)):
            used = own or full
            value = _curve(used, d_model)
        else:
            used = own + full
            if own:
                ref = own[0].d_model
                value = _curve(full, d_model) * own[0].mfu / _curve(full, ref)
            else:
                value = _curve(full, d_model)
        status = "measured" if all(r.status == "measured" for r in used) else ("assumed" if all(r.status == "assumed" for r in used) else "partly assumed")
        command = "; ".join(dict.fromkeys(r.command for r in used))
        date = ", ".join(dict.fromkeys(r.date for r in used))
        note = "" if len(used) == 1 else f"from {len(used)} rows at d_model " + ", ".join(str(r.d_model) for r in used)
        if hw == "cpu" and not all(r.kept_memory for r in used):
            note = "; ".join(filter(None, [note, "measured with glibc's defaults (LLM_CPU_KEEP_MEMORY=0): llm's own "
                                                "settings run faster; recalibrate with llm plan --calibrate"]))
        kept = all(r.kept_memory for r in used)
        return MfuRow(hw, method, min(value, 1.0), status, date, command, d_model, note, kept_memory=kept)
    raise UserError(f"the MFU table has no row for {chip} ({kind}); add one for hardware {chip!r} or {kind!r} to configs/plan_mfu.json")
