"""Create a model directly sharded: the abstract model gives shapes and logical axes, the
rules give shardings, and a jitted init with those out_shardings materialises each parameter
on its devices (no full copy on one device)."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from llm.errors import ConfigError
from llm.model.decoder import Decoder
from llm.model.spec import ModelSpec
from llm.parallel.rules import AxisRules
from llm.pytree import path_str


def abstract_model(spec: ModelSpec, rules: AxisRules, seed: int = 0) -> tuple[nnx.GraphDef, nnx.State]:
    """GraphDef and abstract State (ShapeDtypeStructs with metadata), no memory allocated."""
    model = nnx.eval_shape(lambda: Decoder(spec, rules, nnx.Rngs(seed)))
    return nnx.split(model)


def logical_axes_tree(abstract_state: nnx.State, n_layers: int, scanned: bool) -> Any:
    """Pure-dict tree of logical axis tuples, with `layers` prepended for scanned blocks."""

    def axes_of(path, variable):
        axes = variable.get_metadata().get("logical_axes")
        if axes is None:
            raise ConfigError(f"parameter {path_str(path)} has no logical axes; annotate it with llm.model.layers.param")
        if variable.get_value().ndim == len(axes) + 1 and scanned:
            axes = ("layers", *axes)
        return axes

    tree = jax.tree_util.tree_map_with_path(axes_of, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree


def param_shardings(abstract_state: nnx.State, spec: ModelSpec, rules: AxisRules) -> Any:
    """Pure-dict tree of NamedShardings for the parameters."""
    axes = logical_axes_tree(abstract_state, spec.n_layers, spec.scan_layers)
    shapes = nnx.to_pure_dict(abstract_state)
    return jax.tree_util.tree_map(
        lambda a, s: rules.sharding(a, s.shape), axes, shapes, is_leaf=lambda x: isinstance(x, tuple)
    )


def init_params(spec: ModelSpec, rules: AxisRules, seed: int) -> tuple[nnx.GraphDef, dict, Any]:
    """(graphdef, params as a pure dict placed on the mesh, their shardings)."""
    graphdef, abstract = abstract_model(spec, rules, seed)
    shardings = param_shardings(abstract, spec, rules)

    def init():
        return nnx.to_pure_dict(nnx.split(Decoder(spec, rules, nnx.Rngs(seed)))[1])

    params = jax.jit(init, out_shardings=shardings)()
    return graphdef, params, shardings


def count_params(params: Any) -> int:
    return sum(x.size for x in jax.tree_util.tree_leaves(params))
