"""The markdown summary of one benchmarks/gpu.sh run: `python -m llm.bench.gpu_table DIR`.

Why a module: the device time is short and shared, so the script only runs the benchmarks and
this turns what they left in DIR into the tables the issue asks for, here or on the device.
It reads DIR/steps.tsv (name, exit status or `skipped`, seconds; one line per step, in run
order) and each step's NAME.json; a step without its JSON shows as failed with the last line
of NAME.error (or NAME.log). Step names: `attention`, `train__CONFIG__FLAGS` (FLAGS `off` or
`maxtext`), `generate__CONFIG`. The machine is the first lines of machine.log. Writes DIR/summary.md too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def read_steps(directory: Path) -> list[tuple[str, str, float]]:
    """(name, status, seconds) per line of steps.tsv; status is "0", another exit code or "skipped"."""
    path = directory / "steps.tsv"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            steps.append((parts[0], parts[1], float(parts[2])))
    return steps


def load(directory: Path, name: str) -> dict | None:
    path = directory / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def why_failed(directory: Path, name: str, status: str) -> str:
    """One line: the step's status and the last non-blank line it printed."""
    if status == "skipped":
        return "skipped (out of time budget)"
    for suffix in ("error", "log"):
        path = directory / f"{name}.{suffix}"
        if path.is_file():
            lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
            if lines:
                return f"FAILED (exit {status}): {lines[-1][:160].replace('|', '/')}"
    return f"FAILED (exit {status}), no output"


def _gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.1f} GiB"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def train_table(directory: Path, steps: list[tuple[str, str, float]], flags: str) -> list[str]:
    lines = ["## Train step", "",
             "Attention `auto`: cuDNN on a GPU (unless noted below), blocked on a CPU.",
             f"MaxText-style XLA flags (`maxtext` rows): {flags or 'none recorded'}", "",
             _row(["config", "XLA flags", "batch x seq", "compute", "tokens/s", "step ms", "MFU", "peak memory",
                   "vs flags off"]),
             _row(["---"] * 9)]
    runs = [(name, status, *name.split("__")[1:]) for name, status, _ in steps if name.startswith("train__")]
    order = list(dict.fromkeys(config for _, _, config, _ in runs))  # by config, flags off first
    runs.sort(key=lambda run: (order.index(run[2]), run[3] != "off"))
    off: dict[str, float] = {}
    for name, status, config, flagset in runs:
        r = load(directory, name)
        if r is None:
            lines.append(_row([config, flagset, why_failed(directory, name, status), *[""] * 6]))
            continue
        rate = r["tokens_per_s"]
        if flagset == "off":
            off[config] = rate
        ratio = f"{rate / off[config]:.2f}x" if flagset != "off" and config in off else ""
        lines.append(_row([config, flagset, "{} x {}".format(*r["batch_shape"]), r["compute_dtype"], f"{rate:,.0f}",
                           f"{1e3 * r['step_time']:.1f}", _pct(r.get("mfu")), _gib(r.get("peak_memory_bytes")), ratio]))
    fallbacks = [f"{name}: {line}" for name, *_ in runs for line in _log_lines(directory, name) if "using xla" in line]
    return lines + ([""] + [f"Attention fell back: {f}" for f in fallbacks] if fallbacks else [])


def _log_lines(directory: Path, name: str) -> list[str]:
    """The step's log lines (model.attention_impl=auto warns there when cuDNN refuses the model)."""
    path = directory / f"{name}.log"
    return [line.strip() for line in path.read_text(errors="replace").splitlines()] if path.is_file() else []


def generate_table(directory: Path, steps: list[tuple[str, str, float]]) -> list[str]:
    lines = ["## Decode", "",
             _row(["config", "batch", "decode tokens/s", "HBM roofline tokens/s", "fraction of roofline", "bandwidth",
                   "fraction of the data sheet's roofline"]),
             _row(["---"] * 7)]
    for name, status, _ in steps:
        if not name.startswith("generate__"):
            continue
        config = name.split("__")[1]
        r = load(directory, name)
        if r is None:
            lines.append(_row([config, "", why_failed(directory, name, status), "", "", "", ""]))
            continue
        batches = sorted(int(k[len("tokens_per_s_b"):]) for k in r if k.startswith("tokens_per_s_b"))
        for b in batches:
            roofline = [f"{r['roofline_tokens_per_s_b1']:,.0f}", _pct(r["roofline_fraction_b1"]),
                        f"{r['bandwidth_gb_s']:,.0f} GB/s measured",
                        _pct(r.get("datasheet_roofline_fraction_b1")) + (f" of {r['datasheet_bandwidth_gb_s']:,.0f} GB/s"
                                                                        if "datasheet_bandwidth_gb_s" in r else "")] \
                if b == 1 and "roofline_fraction_b1" in r else ["", "", "", ""]
            lines.append(_row([config, b, f"{r[f'tokens_per_s_b{b}']:,.1f}", *roofline]))
    if len(lines) > 4:
        lines += ["", "Greedy, no stop token, 64-token prompts; tokens/s of the decode loop (prefill excluded). "
                  "Roofline: every decode step reads all weights once (bytes / measured bandwidth, and / the "
                  "data sheet's bandwidth: llm.parallel.accelerators; none on a CPU)."]
    return lines


def attention_table(directory: Path, steps: list[tuple[str, str, float]]) -> list[str]:
    lines = ["## Attention check", ""]
    status = next((s for n, s, _ in steps if n == "attention"), None)
    r = load(directory, "attention")
    if r is None:
        return lines + [why_failed(directory, "attention", status or "?") if status else "not run"]
    impl, vs = r["impl"], r["vs"]
    worst = lambda side: max(r["errors"][q][side]["rel"] for q in r["errors"])  # noqa: E731
    leak = ", ".join(f"{s} {max(v[q]['change'] for q in ('out', 'dq', 'dk', 'dv')):.3g}" for s, v in r["leak"].items())
    timing = ", ".join(f"{s} {t['best_ms']:.2f}" for s, t in r.get("timing", {}).items())
    lines += [_row(["check", "dtype", "batch x seq, heads/kv of dim", f"max rel err {impl} vs f32", f"max rel err {vs} vs f32",
                    "change outside changed doc", "fwd+bwd ms", "verdict"]),
              _row(["---"] * 8),
              _row([f"{impl} vs {vs}", r["dtype"], f"{r['batch']} x {r['seq']}, {r['heads']}/{r['kv_heads']} of {r['head_dim']}",
                    f"{worst('impl_f32'):.2e}", f"{worst('vs_f32'):.2e}", leak, timing,
                    "ok" if r["ok"] else "FAIL: " + "; ".join(r["failures"]).replace("|", "/")]),
              "", f"Limit: relative error {r['tolerance']:.0e} vs f32 (outputs and q/k/v gradients); "
              "the change outside the changed document must be exactly 0."]
    return lines


def summary(directory: Path) -> str:
    """The markdown tables of the run in `directory`."""
    steps = read_steps(directory)
    flags_file = directory / "xla_flags.txt"
    flags = flags_file.read_text().splitlines()[0].strip() if flags_file.is_file() and flags_file.read_text().strip() else ""
    machine = directory / "machine.log"
    head = ["# GPU benchmarks", ""]
    if machine.is_file():
        head += ["```", *machine.read_text(errors="replace").strip().splitlines()[:12], "```", ""]
    ok = [n for n, s, _ in steps if s == "0"]
    failed = [n for n, s, _ in steps if s not in ("0", "skipped")]
    skipped = [n for n, s, _ in steps if s == "skipped"]
    total = (f"Steps: {len(ok)} ok, {len(failed)} failed{' (' + ', '.join(failed) + ')' if failed else ''}, "
             f"{len(skipped)} skipped{' (' + ', '.join(skipped) + ')' if skipped else ''}; "
             f"{sum(t for _, _, t in steps):.0f} s in steps.")
    parts = [head, attention_table(directory, steps), train_table(directory, steps, flags),
             generate_table(directory, steps), [total]]
    return "\n".join("\n".join(p) + "\n" for p in parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -m llm.bench.gpu_table DIR  (the output directory of benchmarks/gpu.sh)", file=sys.stderr)
        return 2
    text = summary(Path(argv[0]))
    (Path(argv[0]) / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
