"""Cloud TPU slice names (`v5p-64`, `v5e-8`, `v6e-64`, ...) -> what the compiler needs to know.

Cloud TPU names count TensorCores for v5p (two per chip, one JAX device per chip) and chips
for v5e and v6e. `TpuTopology.topology` is the chip grid in the form
`jax.experimental.topologies.get_topology_desc` takes ("v5p:2x4x4"), which lets a CPU machine
with the libtpu wheel compile for a slice it does not have.
"""

from __future__ import annotations

import dataclasses
import math
import re

from llm.errors import UserError
from llm.parallel.accelerators import peak_flops

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Generation:
    name: str  # the prefix in slice names
    topology_prefix: str  # the prefix get_topology_desc takes
    cores_per_chip: int  # how many units of the slice name make one chip (one JAX device)
    dims: int  # 2D torus (v5e, v6e) or 3D (v5p)
    hbm_bytes: int  # usable per chip: what the TPU compiler allows (a little under the physical size)
    device_kind: str  # what jax.Device.device_kind says for this chip
    sizes: tuple[int, ...]  # valid numbers in the slice name

    @property
    def peak_flops(self) -> float:
        """Dense bf16 FLOP/s per chip (llm.parallel.accelerators)."""
        peak = peak_flops(self.device_kind)
        assert peak is not None, self.device_kind  # every generation here has a row there
        return peak


# Usable HBM as libtpu's compiler reports it ("exceeds available HBM (95.74G)"); 1G = 2**30.
GENERATIONS = {
    g.name: g
    for g in (
        Generation("v5p", "v5p", 2, 3, int(95.74 * GIB), "TPU v5", tuple(2**k for k in range(3, 14))),
        Generation("v5e", "v5e", 1, 2, int(15.75 * GIB), "TPU v5 lite", (1, 4, 8, 16, 32, 64, 128, 256)),
        Generation("v6e", "v6e", 1, 2, int(31.25 * GIB), "TPU v6 lite", (1, 4, 8, 16, 32, 64, 128, 256)),
    )
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e"}


@dataclasses.dataclass(frozen=True)
class TpuTopology:
    name: str  # as the user wrote it, normalised: "v5p-64"
    generation: Generation
    chips: int
    grid: tuple[int, ...]  # chips along each torus axis

    @property
    def topology(self) -> str:
        """The argument for jax.experimental.topologies.get_topology_desc."""
        return f"{self.generation.topology_prefix}:{'x'.join(map(str, self.grid))}"

    @property
    def topology_kwargs(self) -> dict:
        """Further get_topology_desc arguments: libtpu assumes hosts of 2x2 chips, which a
        one-chip slice (v5e-1, v6e-1) is not divisible by."""
        return {"chips_per_host_bounds": (1, 1, 1)} if self.chips == 1 else {}

    @property
    def hbm_bytes(self) -> int:
        return self.generation.hbm_bytes

    @property
    def peak_flops(self) -> float:
        return self.generation.peak_flops


def chip_grid(chips: int, dims: int) -> tuple[int, ...]:
    """The slice shape Cloud TPU uses for a power-of-two chip count: as cubic (3D) or square
    (2D) as possible, smaller axes first, e.g. 32 chips -> 2x4x4 (3D) or 4x8 (2D); 4 chips in
    3D is 2x2x1."""
    k = int(math.log2(chips))
    if 2**k != chips:
        raise ValueError(f"{chips} chips is not a power of two")
    grid = [2 ** (k // dims + (1 if i < k % dims else 0)) for i in range(dims)]
    return tuple(sorted(grid, key=lambda n: (n == 1, n)))


def known_names() -> str:
    return ", ".join(f"{g.name}-N (N in {g.sizes[0]}..{g.sizes[-1]})" for g in GENERATIONS.values())


def parse_topology(name: str) -> TpuTopology:
    """`v5p-64` / `v5e-8` / `v5litepod-16` / `v6e-64` -> TpuTopology; anything else is
    a one-line UserError listing what is known."""
    match = re.fullmatch(r"\s*(v\d+[a-z]*)-(\d+)\s*", name.lower())
    gen_name = ALIASES.get(match.group(1), match.group(1)) if match else None
    if gen_name not in GENERATIONS:
        raise UserError(f"unknown TPU topology {name!r}; use one of {known_names()}")
    gen = GENERATIONS[gen_name]
    size = int(match.group(2))
    if size not in gen.sizes:
        raise UserError(
            f"unknown TPU topology {name!r}: {gen.name} slices come in sizes {', '.join(map(str, gen.sizes))}"
        )
    chips = max(size // gen.cores_per_chip, 1)
    return TpuTopology(f"{gen.name}-{size}", gen, chips, chip_grid(chips, gen.dims))
