"""Pytree helpers every layer shares: readable names for key paths and abstract copies of trees.

It imports nothing from `llm`, so model, parallel, peft, train, checkpoint and the tools below
the CLI can all use it without bending the dependency direction (DESIGN.md).
"""

from __future__ import annotations

from typing import Any, Iterable

import jax


def key_of(key: Any) -> Any:
    """The plain key behind one step of a jax key path: a dict key, an attribute name or a
    sequence index (int); anything else (already plain) comes back unchanged."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return getattr(key, attr)
    return key


def path_keys(path: Iterable[Any]) -> tuple:
    """A jax key path as plain keys: (DictKey("blocks"), SequenceKey(0)) -> ("blocks", 0)."""
    return tuple(key_of(k) for k in path)


def key_name(key: Any) -> str:
    return str(key_of(key))


def path_str(path: Iterable[Any]) -> str:
    """("blocks", 0, "attn") or a jax key path -> "blocks/0/attn": how messages and tables name a leaf."""
    return "/".join(key_name(k) for k in path)


def get_path(tree: Any, path: tuple) -> Any:
    """The subtree of a nested dict at plain-key `path`."""
    for key in path:
        tree = tree[key]
    return tree


def set_path(tree: dict, path: tuple, value: Any) -> None:
    """Put `value` at plain-key `path` of a nested dict, creating the dicts on the way."""
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs carrying each leaf's sharding: a restore or compile target that holds no memory."""
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree`'s shapes and dtypes placed by the matching tree of `shardings`."""
    return jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), tree, shardings)


def merge_trees(a: Any, b: Any) -> Any:
    """Union of two nested dicts with disjoint leaves (shares the arrays, copies the dicts)."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        raise ValueError("trees overlap at a leaf")
    out = dict(a)
    for key, value in b.items():
        out[key] = merge_trees(out[key], value) if key in out else value
    return out
