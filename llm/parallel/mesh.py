"""Build the device mesh (`data`, `fsdp`, `tensor`, `sequence`) from the config's sizes.

Every run builds its mesh here. Over the job's devices (no explicit list) a size mistake says how
the job's devices are spread over its processes, since on a pod the count a user sees on one host
is not the count the mesh must fill.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from llm.errors import ConfigError
from llm.parallel.multihost import job_shape

MESH_AXES = ("data", "fsdp", "tensor", "sequence")  # sequence: context parallelism (rules.length)


def resolve_mesh_shape(mesh_cfg: ml_collections.ConfigDict, n_devices: int, where: str = "") -> tuple[int, ...]:
    """Fill the one `-1` axis with the rest of the devices and check the product; `where`
    (e.g. "the job has 2 processes x 4 devices per process") goes into the error message."""
    note = f" ({where})" if where else ""
    sizes = [int(mesh_cfg.get(a, 1)) for a in MESH_AXES]  # configs saved before `sequence` existed
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if known == 0 or n_devices % known:
            raise ConfigError(
                f"mesh {dict(zip(MESH_AXES, sizes))} cannot fill {n_devices} devices: "
                f"{n_devices} is not divisible by {known}{note}; change the fixed mesh sizes"
            )
        sizes[sizes.index(-1)] = n_devices // known
    if math.prod(sizes) != n_devices:
        raise ConfigError(
            f"mesh {' x '.join(f'{a}={n}' for a, n in zip(MESH_AXES, sizes))} = {math.prod(sizes)} devices, "
            f"but {n_devices} are available{note}; make the sizes multiply to {n_devices} (or set one to -1)"
        )
    return tuple(sizes)


def build_mesh(mesh_cfg: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh over the job's devices (all processes') or the given ones, shaped by the config."""
    where = f"the job has {job_shape()}" if devices is None else ""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(mesh_cfg, len(devices), where)
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # noqa: BLE001 - topology-aware layout is best effort (CPU has no topology)
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)
