"""llm.parallel.topology: Cloud TPU slice names -> chip count, chip grid, compiler topology
string, HBM, peak; unknown names are one-line errors.

The expected slice shapes are Cloud TPU's documented ones; everything else is checked against
libtpu (the `tpu` extra, no TPU needed): for every slice name we accept, libtpu's description of
our topology string has our chip count, grid, device kind and cores per chip, and its compiler's
out-of-memory message states our per-chip HBM.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import SingleDeviceSharding

from llm.errors import UserError
from llm.parallel.accelerators import peak_flops
from llm.parallel.topology import GENERATIONS, GIB, chip_grid, parse_topology


@pytest.mark.parametrize(
    "name, chips, topology",
    [
        ("v5p-8", 4, "v5p:2x2x1"),
        ("v5p-16", 8, "v5p:2x2x2"),
        ("v5p-64", 32, "v5p:2x4x4"),
        ("v5p-128", 64, "v5p:4x4x4"),
        ("v5p-256", 128, "v5p:4x4x8"),
        ("v5e-1", 1, "v5e:1x1"),
        ("v5e-4", 4, "v5e:2x2"),
        ("v5e-8", 8, "v5e:2x4"),
        ("v5litepod-16", 16, "v5e:4x4"),
        ("v5e-32", 32, "v5e:4x8"),
        ("v6e-64", 64, "v6e:8x8"),
        ("v6e-256", 256, "v6e:16x16"),
        (" V6E-8 ", 8, "v6e:2x4"),
    ],
)
def test_slice_names(name, chips, topology):
    t = parse_topology(name)
    assert (t.chips, t.topology) == (chips, topology)


def test_aliases_and_table_peaks():
    assert parse_topology("v5litepod-8").name == "v5e-8"
    # DESIGN.md's dense bf16 peaks per chip.
    assert {g: GENERATIONS[g].peak_flops for g in GENERATIONS} == {"v5e": 197e12, "v5p": 459e12, "v6e": 918e12}
    assert peak_flops("NVIDIA H100 80GB HBM3") == peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("Tesla T4") is None


def require_libtpu():
    if importlib.util.find_spec("libtpu") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install the tpu extra (libtpu) for the topology checks")
        pytest.skip("libtpu is not installed: pip install -e '.[tpu]'")


ALL_NAMES = [f"{g.name}-{size}" for g in GENERATIONS.values() for size in g.sizes]


@functools.cache
def libtpu_devices(name: str) -> list:
    """libtpu's compile-only devices for our topology string of slice `name`."""
    from llm.compile.aot import topology_devices

    return topology_devices(parse_topology(name))


@pytest.mark.parametrize("name", ALL_NAMES)
def test_libtpu_describes_each_slice_as_we_parse_it(name):
    require_libtpu()
    t = parse_topology(name)
    devices = libtpu_devices(name)
    coords = np.array([d.coords for d in devices])
    grid = tuple(int(n) for n in coords.max(axis=0) + 1)
    assert len(devices) == t.chips
    assert grid == tuple(t.grid) + (1,) * (3 - len(t.grid))
    assert {d.device_kind for d in devices} == {t.generation.device_kind}
    assert {d.num_cores for d in devices} == {t.generation.cores_per_chip}  # v5p: 2 TensorCores per chip
    # MFU on a real chip looks its peak up by the device kind JAX reports.
    assert peak_flops(devices[0].device_kind) == t.peak_flops


@pytest.mark.parametrize("generation", sorted(GENERATIONS))
def test_hbm_is_what_the_tpu_compiler_allows(generation):
    require_libtpu()
    gen = GENERATIONS[generation]
    device = libtpu_devices(f"{gen.name}-{gen.sizes[-1]}")[0]
    too_big = jax.ShapeDtypeStruct((2**40,), jnp.int8, sharding=SingleDeviceSharding(device))
    with pytest.raises(Exception, match="available HBM") as err:
        jax.jit(lambda x: x + 1).lower(too_big).compile()
    available = float(re.search(r"available HBM \(([0-9.]+)G\)", str(err.value)).group(1))  # G = 2**30
    assert abs(gen.hbm_bytes / GIB - available) < 0.006, (gen.hbm_bytes / GIB, available)


def test_chip_grid_rejects_non_powers_of_two():
    with pytest.raises(ValueError):
        chip_grid(12, 2)


@pytest.mark.parametrize(
    "name, message",
    [
        ("v9-8", "unknown TPU topology 'v9-8'; use one of v5p-N"),
        ("tpu", "unknown TPU topology 'tpu'"),
        ("v5p-63", "v5p slices come in sizes 8, 16, 32"),
        ("v5e-2", "v5e slices come in sizes 1, 4, 8"),
        ("v4-32", "unknown TPU topology 'v4-32'"),
    ],
)
def test_unknown_names_are_one_line_errors(name, message):
    with pytest.raises(UserError) as err:
        parse_topology(name)
    assert message in str(err.value) and "\n" not in str(err.value)
