"""Helpers for a job of several processes: what one process holds of a global batch, and
per-process JSON state gathered for the one writer.

Each process reads only its own rows of every global batch (`data.batch_size // processes`) and
`jax.make_array_from_process_local_data` places them; `check_process_rows` makes sure at start
that the mesh really gives each process that many rows of its own, since JAX would otherwise
silently treat different rows as replicas of one another.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding

from llm.errors import ConfigError


def job_shape() -> str:
    """'2 processes x 4 devices per process': how the job's devices are spread, for messages."""
    processes, local = jax.process_count(), jax.local_device_count()
    return f"{processes} process{'es' if processes != 1 else ''} x {local} device{'s' if local != 1 else ''} per process"


def local_rows(sharding: NamedSharding, global_shape: tuple[int, ...]) -> tuple[int, int]:
    """[start, stop) of the leading (batch) axis this process's devices hold; a one-line
    ConfigError if those rows are not contiguous (the batch axes are not first in the mesh)."""
    starts, stops = [], []
    for index in sharding.addressable_devices_indices_map(global_shape).values():
        rows = index[0] if index else slice(None)
        start, stop, _ = rows.indices(global_shape[0])
        starts.append(start)
        stops.append(stop)
    lo, hi = min(starts), max(stops)
    covered = np.zeros(hi - lo, bool)
    for start, stop in zip(starts, stops):
        covered[start - lo : stop - lo] = True
    if not covered.all():
        raise ConfigError(
            f"this process's devices hold non-contiguous batch rows of {global_shape}; "
            "put the batch axes (data, fsdp) first in the mesh"
        )
    return lo, hi


def check_process_rows(sharding: NamedSharding, global_shape: tuple[int, ...]) -> None:
    """Each process must hold exactly its share (1 / process count) of the batch rows, the rows
    the data pipeline gives it; otherwise two processes would feed different rows as copies."""
    processes = jax.process_count()
    if len(global_shape) > 1:  # the pipeline gives each process whole rows: every position of them
        indices = sharding.addressable_devices_indices_map(global_shape).values()
        held = {index[1].indices(global_shape[1]) if len(index) > 1 else (0, global_shape[1], 1) for index in indices}
        if min(start for start, _, _ in held) != 0 or max(stop for _, stop, _ in held) != global_shape[1]:
            raise ConfigError(
                f"with mesh {dict(sharding.mesh.shape)} this process's devices hold only some positions of their "
                f"rows, but the data pipeline gives each process whole rows; keep mesh.sequence within one "
                f"process's devices ({jax.local_device_count()})"
            )
    lo, hi = local_rows(sharding, global_shape)
    share = global_shape[0] // processes
    if hi - lo != share:
        mesh = dict(sharding.mesh.shape)
        raise ConfigError(
            f"with mesh {mesh} each process's devices hold {hi - lo} of the {global_shape[0]} batch rows, "
            f"but each of the {processes} processes reads {share} (the job has {job_shape()}); "
            f"make mesh.data x mesh.fsdp a multiple of {processes}"
        )


def allgather_json(value: Any) -> list[Any]:
    """Every process's JSON-serialisable `value`, in process order, on every process.

    For per-process state that one writer must save, e.g. each process's data iterator position
    (Orbax writes JSON items from process 0 only). Call on all processes together.
    """
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int32))).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
    return [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, lengths)]
