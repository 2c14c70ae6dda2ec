"""Build the device mesh (`data`, `fsdp`, `tensor`) from the config's sizes."""

from __future__ import annotations

import math
from typing import Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from llm.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")


def resolve_mesh_shape(mesh_cfg: ml_collections.ConfigDict, n_devices: int) -> tuple[int, int, int]:
    """Fill the one `-1` axis with the rest of the devices and check the product."""
    sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if known == 0 or n_devices % known:
            raise ConfigError(
                f"mesh {dict(zip(MESH_AXES, sizes))} cannot fill {n_devices} devices: "
                f"{n_devices} is not divisible by {known}; change the fixed mesh sizes"
            )
        sizes[sizes.index(-1)] = n_devices // known
    if math.prod(sizes) != n_devices:
        raise ConfigError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = {math.prod(sizes)} devices, "
            f"but {n_devices} are available; make the sizes multiply to {n_devices} (or set one to -1)"
        )
    return tuple(sizes)


def build_mesh(mesh_cfg: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh over all (or the given) devices, shaped by the config."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(mesh_cfg, len(devices))
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # noqa: BLE001 - topology-aware layout is best effort (CPU has no topology)
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)
