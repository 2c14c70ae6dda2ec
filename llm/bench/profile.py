"""`llm bench --profile DIR`: a jax.profiler trace of the train step, and the ops that took its time.

Why: a tokens/s figure says how fast, not where the time goes. The trace opens in XProf /
TensorBoard's profile plugin (README "Profile a step"); the table printed here is read from
the same file with jax's own reader (`jax.profiler.ProfileData`), so it needs no extra
package. An event counts as an op when its name is an instruction of the compiled step's HLO:
on GPU and TPU those events sit on the device's "XLA Ops" line, on CPU on XLA's threads (where
independent ops run at the same time, so their shares can add up past 100%).
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import jax

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\(", re.M)
_COMPUTATION = re.compile(r"^%?([\w.\-]+) \(.*?\) -> .*? \{\n(.*?)\n\}", re.M | re.S)


def trace_steps(step: Callable[[], None], steps: int, directory: str | Path) -> tuple[Path, float]:
    """(the .xplane.pb written, seconds per step) for `steps` calls of `step` under
    jax.profiler.trace; each call must block until its step is done."""
    directory = Path(directory)
    before = set(directory.rglob("*.xplane.pb"))
    with jax.profiler.trace(str(directory)):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        seconds = (time.perf_counter() - start) / steps
    written = sorted(set(directory.rglob("*.xplane.pb")) - before)
    if not written:
        raise RuntimeError(f"jax.profiler wrote no trace under {directory}")
    return written[-1], seconds


def hlo_ops(hlo_text: str) -> dict[str, str]:
    """{instruction name: "opcode shape"} for every instruction of a compiled HLO module; a
    fusion's opcode names what it fuses around (`fusion:dot`, `fusion:kLoop`), a custom call its
    target."""
    bodies = {m.group(1): m.group(2) for m in _COMPUTATION.finditer(hlo_text)}
    ops = {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, shape, opcode = m.groups()
        if opcode == "fusion":
            called = re.search(r"calls=%?([\w.\-]+)", line)
            body = bodies.get(called.group(1), "") if called else ""
            inner = next((op for op in ("dot", "convolution", "reduce", "scatter", "gather") if f" {op}(" in body), None)
            kind = re.search(r"kind=(\w+)", line)
            opcode = f"fusion:{inner or (kind.group(1) if kind else '?')}"
        elif opcode == "custom-call":
            target = re.search(r'custom_call_target="([^"]+)"', line)
            opcode = f"custom-call:{target.group(1) if target else '?'}"
        ops.setdefault(name, f"{opcode} {shape}")
    return ops


def op_table(xplane: str | Path, hlo_text: str, steps: int, step_seconds: float) -> list[dict]:
    """Per-op rows, slowest first: name, kind, ms_per_step, calls_per_step, share (of the step's
    wall time). Device planes ("/device:...") are read where the trace has them, else the host."""
    from jax.profiler import ProfileData

    known = hlo_ops(hlo_text)
    planes = list(ProfileData.from_file(str(xplane)).planes)
    device = [p for p in planes if p.name.startswith("/device:")]
    total: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for plane in device or [p for p in planes if p.name.startswith("/host:")]:
        for line in plane.lines:
            for event in line.events:
                if event.name in known:
                    total[event.name] += event.duration_ns * 1e-9
                    calls[event.name] += 1
    rows = [
        {"name": name, "kind": known[name], "ms_per_step": 1e3 * seconds / steps,
         "calls_per_step": calls[name] / steps, "share": seconds / (steps * step_seconds)}
        for name, seconds in total.items()
    ]
    if not rows:
        raise RuntimeError(f"the trace {xplane} holds no event named after an op of the compiled step")
    return sorted(rows, key=lambda r: -r["ms_per_step"])


def format_table(rows: list[dict], top: int, step_seconds: float) -> str:
    """The `top` rows as text, with the share of the step all ops took together."""
    covered = sum(r["share"] for r in rows)
    lines = [f"top {min(top, len(rows))} of {len(rows)} ops (traced step {1e3 * step_seconds:.1f} ms; "
             f"all ops together {100 * covered:.0f}% of it, summed over threads):",
             f"{'share':>6} {'ms/step':>8} {'calls':>5}  op  (kind, shape)"]
    for r in rows[:top]:
        lines.append(f"{100 * r['share']:5.1f}% {r['ms_per_step']:8.2f} {r['calls_per_step']:5.0f}  {r['name']}  ({r['kind']})")
    kinds: dict[str, float] = defaultdict(float)
    for r in rows:
        kinds[r["kind"].split()[0]] += r["share"]
    ranked = sorted(kinds.items(), key=lambda kv: -kv[1])[:8]
    lines.append("by kind: " + ", ".join(f"{kind} {100 * share:.0f}%" for kind, share in ranked))
    return "\n".join(lines)


def profile_step(step: Callable[[], None], compiled_text: Callable[[], str], directory: str | Path, steps: int,
                 top: int = 25) -> dict:
    """Trace `steps` more calls of `step` (after the timed ones, so the tracer's overhead stays
    out of the figures), print the op table and return it with the trace's path."""
    hlo = compiled_text()  # before the trace: the traced steps donate the state it is lowered with
    xplane, seconds = trace_steps(step, steps, directory)
    rows = op_table(xplane, hlo, steps, seconds)
    print(format_table(rows, top, seconds))
    print(f"trace: {xplane} (open it: README, Profile a step)")
    return {"trace": str(xplane), "traced_steps": steps, "traced_step_time": seconds, "top_ops": rows[:top]}
