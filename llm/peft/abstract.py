"""Parameter transforms that also run on abstract trees.

`llm compile` applies the same trainable/frozen partition as `llm sft` to the base model's
sharded ShapeDtypeStructs: the devices of a described TPU slice can compile but hold no data,
and an 8B model should not be materialised to measure it. The few places where a transform
creates arrays (fresh adapters, a quantized base, a classification head) ask here whether to
create them or only describe them (shape, dtype and the sharding they would be placed with).
"""

from __future__ import annotations

from typing import Any

import jax


def is_abstract(tree: Any) -> bool:
    """True when every leaf is a ShapeDtypeStruct (an empty tree is concrete)."""
    leaves = jax.tree_util.tree_leaves(tree)
    return bool(leaves) and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)


def call(jitted: Any, *args: Any, abstract: bool) -> Any:
    """`jitted(*args)`, or, when abstract, its outputs as ShapeDtypeStructs carrying the
    jit's out_shardings, without running it."""
    return jitted.eval_shape(*args) if abstract else jitted(*args)
