"""The hardware `llm plan` knows: TPU slices (the names `llm compile` takes), GPU nodes and
this machine's CPU, with the per-chip figures a plan needs.

Peaks come from llm.parallel.accelerators (the one table MFU is measured against); HBM of TPU
slices from llm.parallel.topology. Interconnect bandwidths are the vendors' published per-chip
figures, one direction, used by the FSDP communication model (llm.plan.timing):
  TPU v5e ICI 1,600 Gbps, v5p 4,800 Gbps, v6e 3,200 Gbps per chip (Cloud TPU system architecture pages);
  H100 / H200 SXM NVLink 4: 900 GB/s bidirectional (450 each way) inside a node of 8,
  A100 SXM NVLink 3: 600 GB/s (300 each way); between nodes one 400 Gb/s (A100: 200 Gb/s) NIC per GPU.
"""

from __future__ import annotations

import dataclasses
import os
import re

from llm.errors import UserError
from llm.parallel.accelerators import peak_flops
from llm.parallel.topology import GENERATIONS, TpuTopology, parse_topology

GIB = 2**30
GBIT = 1e9 / 8  # bytes/s in one Gbit/s


@dataclasses.dataclass(frozen=True)
class GpuKind:
    name: str
    device_kind: str  # what jax.Device.device_kind says (the peak table's key)
    hbm_bytes: int  # usable per GPU: physical minus what the driver and CUDA context keep
    nvlink_bytes_s: float  # per GPU, one direction, inside a node
    nic_bytes_s: float  # per GPU, one direction, between nodes
    gpus_per_node: int = 8


GPUS = {
    g.name: g
    for g in (
        GpuKind("h100", "NVIDIA H100 80GB HBM3", int(78 * GIB), 450e9, 400 * GBIT),
        GpuKind("h200", "NVIDIA H200", int(138 * GIB), 450e9, 400 * GBIT),
        GpuKind("a100", "NVIDIA A100-SXM4-80GB", int(78 * GIB), 300e9, 200 * GBIT),
    )
}
ICI_BYTES_S = {"v5e": 1600 * GBIT, "v5p": 4800 * GBIT, "v6e": 3200 * GBIT}


@dataclasses.dataclass(frozen=True)
class Hardware:
    """One hardware choice: `chips` devices of one kind."""

    name: str  # as printed: "v5e-8", "h100x8", "cpu"
    kind: str  # tpu | gpu | cpu
    chip: str  # the price table's and MFU table's key: v5e, v5p, v6e, h100, h200, a100, cpu
    chips: int
    hbm_bytes: int  # per chip (cpu: the machine's memory)
    peak_flops: float  # per chip, dense bf16 (cpu: 0, measured when needed)
    link_bytes_s: float  # per chip, one direction, over the slowest link the collectives cross (0: one chip)
    link_name: str
    topology: TpuTopology | None = None  # TPU slices: what libtpu compiles for

    @property
    def compiler(self) -> str | None:
        """Who can compile for it on this machine: libtpu for TPU slices, XLA:CPU for cpu."""
        return {"tpu": "libtpu", "cpu": "xla-cpu"}.get(self.kind)


def _machine_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:  # pragma: no cover - psutil is a dependency of the dev environment
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def known_names() -> str:
    tpus = ", ".join(f"{g}-N" for g in GENERATIONS)
    gpus = ", ".join(f"{g}xN" for g in GPUS)
    return f"{tpus} (Cloud TPU slice names), {gpus} (N GPUs, 8 per node), cpu (this machine)"


def parse_hardware(name: str) -> Hardware:
    """`v5e-8` / `v5p-64` / `v6e-16` / `h100x8` / `h200` / `a100x16` / `cpu` -> Hardware."""
    text = name.strip().lower()
    if text == "cpu":
        return Hardware("cpu", "cpu", "cpu", 1, _machine_memory(), 0.0, 0.0, "none (one device)")
    gpu = re.fullmatch(r"([a-z]\d+)(?:x(\d+))?", text)
    if gpu and gpu.group(1) in GPUS:
        kind, n = GPUS[gpu.group(1)], int(gpu.group(2) or 1)
        if n < 1 or (n > kind.gpus_per_node and n % kind.gpus_per_node):
            raise UserError(f"unknown hardware {name!r}: {kind.name}xN takes N <= {kind.gpus_per_node} or a multiple of it")
        link, link_name = (kind.nvlink_bytes_s, "NVLink") if n <= kind.gpus_per_node else (kind.nic_bytes_s, "inter-node NIC")
        peak = peak_flops(kind.device_kind)
        assert peak is not None, kind.device_kind
        return Hardware(f"{kind.name}x{n}", "gpu", kind.name, n, kind.hbm_bytes, peak, link if n > 1 else 0.0, link_name)
    if re.fullmatch(r"v\d+[a-z]*-\d+", text):
        try:
            topo = parse_topology(text)
        except UserError as err:
            raise UserError(f"{err}; known hardware: {known_names()}") from None
        gen = topo.generation.name
        return Hardware(topo.name, "tpu", gen, topo.chips, topo.hbm_bytes, topo.peak_flops,
                        ICI_BYTES_S[gen] if topo.chips > 1 else 0.0, "ICI", topo)
    raise UserError(f"unknown hardware {name!r}; use one of {known_names()}")


def parse_hardware_list(text: str) -> list[Hardware]:
    names = [n for n in text.split(",") if n.strip()]
    if not names:
        raise UserError(f"--hardware {text!r} names no hardware; use e.g. v5e-8,v5p-8,h100x8,cpu ({known_names()})")
    return [parse_hardware(n) for n in names]
