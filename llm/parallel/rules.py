"""Logical axis names -> mesh axes.

Model code names its axes (`embed`, `heads`, `batch`, ...); these rules, from config, decide
which mesh axes shard them. Changing parallelism is a config edit, never a code edit.
"""

from __future__ import annotations

import math
from typing import Iterable, NamedTuple, Sequence

import jax
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llm.errors import ConfigError


class AxisRules(NamedTuple):
    """Hashable rules (so they can live in a module's static graph) plus an optional mesh."""

    rules: tuple[tuple[str, tuple[str, ...]], ...]
    mesh: Mesh | None = None

    @classmethod
    def from_config(cls, rules_cfg: ml_collections.ConfigDict, mesh: Mesh | None = None) -> "AxisRules":
        return cls(tuple((name, tuple(axes)) for name, axes in rules_cfg.items()), mesh)

    def axes_for(self, name: str | None) -> tuple[str, ...]:
        if name is None:
            return ()
        for rule_name, axes in self.rules:
            if rule_name == name:
                return axes
        known = ", ".join(n for n, _ in self.rules)
        raise ConfigError(f"no sharding rule covers logical axis {name!r}; add mesh.rules.{name} (known: {known})")

    def spec(self, names: Sequence[str | None], shape: Sequence[int] | None = None) -> PartitionSpec:
        """PartitionSpec for an array with these logical axis names.

        A mesh axis is used at most once per array (the first dimension claiming it wins), and
        mesh axes of size 1 are dropped so small meshes give clean specs.
        """
        used: set[str] = set()
        parts = []
        for dim, name in enumerate(names):
            axes = []
            for axis in self.axes_for(name):
                if axis in used:
                    continue
                if self.mesh is not None and self.mesh.shape[axis] == 1:
                    continue
                axes.append(axis)
            if shape is not None and self.mesh is not None and axes:
                shards = math.prod(self.mesh.shape[a] for a in axes)
                if shape[dim] % shards:
                    raise ConfigError(
                        f"logical axis {name!r} of size {shape[dim]} cannot be split over mesh axes "
                        f"{axes} ({shards} shards); change mesh sizes or mesh.rules.{name}"
                    )
            used.update(axes)
            parts.append(tuple(axes) if len(axes) > 1 else (axes[0] if axes else None))
        return PartitionSpec(*parts)

    def sharding(self, names: Sequence[str | None], shape: Sequence[int] | None = None) -> NamedSharding:
        if self.mesh is None:
            raise ValueError("AxisRules has no mesh; build it with a mesh to get shardings")
        return NamedSharding(self.mesh, self.spec(names, shape))

    def constrain(self, x: jax.Array, names: Iterable[str | None]) -> jax.Array:
        """Annotate an activation's sharding; a no-op without a multi-device mesh."""
        if self.mesh is None or self.mesh.size == 1:
            return x
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, self.spec(tuple(names))))

    def shards(self, name: str) -> int:
        """How many ways a logical axis is split on this mesh."""
        if self.mesh is None:
            return 1
        return math.prod(self.mesh.shape[a] for a in self.axes_for(name))
