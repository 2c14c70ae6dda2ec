"""Which bf16 matrix instructions this CPU has, read from the CPU flags.

AMX (amx_tile + amx_bf16: Sapphire Rapids and later Xeons) multiplies 16x32 bf16 tiles into
16x16 f32 tiles; AVX-512 BF16 (`vdpbf16ps`: Cooper Lake, Sapphire Rapids, AMD Zen 4+) does
pairwise bf16 dot products in 512-bit vectors. Linux lists both in /proc/cpuinfo; elsewhere
(or if it cannot be read) we report neither, and the XLA paths run.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

AMX = "amx"
AVX512_BF16 = "avx512_bf16"


def parse_flags(cpuinfo: str) -> frozenset[str]:
    """The `flags` of the first processor in a /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def bf16_engine(flags: frozenset[str]) -> str | None:
    """The best bf16 matrix engine these CPU flags offer: "amx", "avx512_bf16" or None."""
    if {"amx_tile", "amx_bf16"} <= flags:
        return AMX
    if {"avx512_bf16", "avx512f", "avx512bw"} <= flags:
        return AVX512_BF16
    return None


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """This machine's CPU flags (empty off Linux x86-64)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return frozenset()
    try:
        return parse_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return frozenset()


def host_bf16_engine() -> str | None:
    return bf16_engine(cpu_flags())


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("" where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def bf16_flags() -> list[str]:
    """This CPU's bf16 matrix flags (AMX, AVX-512 BF16) for reports; [] elsewhere."""
    return sorted(cpu_flags() & {"amx_bf16", "amx_tile", "avx512_bf16"})
