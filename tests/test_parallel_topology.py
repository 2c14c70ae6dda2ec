"""llm.parallel.topology: Cloud TPU slice names -> chip count, chip grid, compiler topology
string, HBM; unknown names are one-line errors."""

from __future__ import annotations

import pytest

from llm.errors import UserError
from llm.parallel.topology import GIB, chip_grid, parse_topology


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


def test_hbm_and_peaks_per_generation():
    assert parse_topology("v5p-64").hbm_bytes == int(95.74 * GIB)
    assert parse_topology("v5e-8").hbm_bytes == int(15.75 * GIB)
    assert parse_topology("v6e-64").hbm_bytes == int(31.25 * GIB)
    assert parse_topology("v5e-8").peak_flops == 197e12
    assert parse_topology("v5litepod-8").name == "v5e-8"


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
