"""`llm compile`: compile the real train step for a TPU slice on this machine and say whether
it fits, before anyone rents the slice. A fine-tuning config (LoRA / QLoRA, peft.freeze,
classification) compiles the step `llm sft` / `llm classify` would run: frozen base, adapters
or unfrozen parameters with their optimizer state, the task's loss.

Needs the libtpu wheel (`pip install -e '.[tpu]'`), not a TPU. Exit code 0 when the config
fits, 1 when it does not (the report then lists the candidates that were compiled).

`--levers` reports the per-chip memory under each remat policy and with the optimizer state in
host memory (llm.compile.levers). GPUs (`--topology h100x1`) get that table from the analytic
memory model: there is no GPU compiler on a CPU machine.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from llm.config.loading import load_config


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("compile", help="compile the train (or fine-tuning) step for a TPU slice and report memory and fit")
    p.add_argument("--config", required=True, help="a configs/*.py file")
    p.add_argument("--topology", required=True,
                   help="a TPU slice: v5p-N, v5e-N (v5litepod-N) or v6e-N; or GPUs, h100xN / h200xN / a100xN (analytic, with --levers' table)")
    p.add_argument("--workdir", default=None, help="where the compiled HLO goes (default runs/compile/CONFIG-TOPOLOGY)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")
    p.add_argument("--max-candidates", type=int, default=8, help="configs to try when it does not fit (0: none)")
    p.add_argument("--levers", action="store_true",
                   help="per-chip memory under each remat policy and with optim.offload_state (one compile each on TPU)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llm.parallel.topology import parse_topology
    from llm.plan.hardware import GPUS, parse_hardware

    gpu = args.topology.strip().lower().split("x")[0] in GPUS
    topology = None if gpu else parse_topology(args.topology)
    config = load_config(args.config, args.config_overrides)
    if config.finetune.task in ("grpo", "ppo"):  # online RL: the batch shape comes from config.rl
        from llm.finetune.grpo import resolve_rl_config

        config = resolve_rl_config(config, need_start=False)
    import jax

    # Compiling for a slice needs no local accelerator; keep JAX (and libtpu) off the TPU backend.
    if not os.environ.get("JAX_PLATFORMS"):
        jax.config.update("jax_platforms", "cpu")
    from llm.compile.aot import topology_devices
    from llm.compile.report import build_report, format_report, write_json

    if gpu or args.levers:
        return _levers(args, config, parse_hardware(args.topology))
    devices = topology_devices(topology)
    workdir = Path(args.workdir or f"runs/compile/{Path(args.config).stem}-{topology.name}")

    def progress(ev) -> None:
        what = " ".join(ev.overrides) or "the config as given"
        print(f"compiled {what}: {'fits' if ev.fits else 'does not fit'}", file=sys.stderr, flush=True)

    report = build_report(args.config, config, topology, devices, workdir, args.max_candidates, progress)
    print(format_report(report))
    if args.json:
        write_json(report, Path(args.json))
    return 0 if report.fits else 1


def _levers(args: argparse.Namespace, config, hw) -> int:
    from llm.compile.levers import format_levers, lever_overrides, lever_rows, write_levers_json

    overrides = lever_overrides(config) if args.levers else [()]
    rows = lever_rows(config, hw, overrides, lambda row: print(f"measured {row.label}", file=sys.stderr, flush=True))
    print(format_levers(args.config, hw.name, hw.hbm_bytes, rows, config.model.remat))
    if args.json:
        write_levers_json(Path(args.json), args.config, hw.name, hw.hbm_bytes, rows)
    return 0 if rows[0].memory.total <= hw.hbm_bytes else 1
