"""llm.pytree: one way to name a leaf's key path, and abstract copies that keep shardings."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llm.pytree import abstract_like, get_path, key_name, path_keys, path_str, set_path, with_shardings


class Pair(NamedTuple):
    left: int
    right: int


def test_every_kind_of_key_is_named_by_its_plain_key():
    tree = {"blocks": [{"attn": {"kernel": 1}}], "pair": Pair(2, 3)}
    paths = [p for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
    assert [path_str(p) for p in paths] == ["blocks/0/attn/kernel", "pair/left", "pair/right"]
    assert path_keys(paths[0]) == ("blocks", 0, "attn", "kernel")  # the index stays an int (layer numbers)
    assert path_keys(paths[1]) == ("pair", "left")
    assert path_str(("blocks", 0, "mlp")) == "blocks/0/mlp" and key_name(7) == "7"  # plain keys pass through


def test_abstract_copies_keep_shape_dtype_and_sharding():
    mesh = Mesh(np.array(jax.devices()[:2]), ("fsdp",))
    sharded = NamedSharding(mesh, PartitionSpec("fsdp"))
    tree = {"w": jax.device_put(jnp.zeros((4, 3), jnp.bfloat16), sharded), "b": jnp.zeros(3)}
    abstract = abstract_like(tree)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves(abstract))
    assert (abstract["w"].shape, abstract["w"].dtype, abstract["w"].sharding) == ((4, 3), jnp.bfloat16, sharded)
    assert abstract["b"].sharding == tree["b"].sharding
    replicated = NamedSharding(mesh, PartitionSpec())
    placed = with_shardings(abstract, {"w": replicated, "b": sharded})
    assert (placed["w"].shape, placed["w"].dtype, placed["w"].sharding) == ((4, 3), jnp.bfloat16, replicated)
    assert placed["b"].sharding == sharded


def test_get_and_set_by_plain_key_path():
    tree: dict = {}
    set_path(tree, ("blocks", 0, "kernel"), 1)
    set_path(tree, ("blocks", 0, "bias"), 2)
    assert tree == {"blocks": {0: {"kernel": 1, "bias": 2}}}
    assert get_path(tree, ("blocks", 0)) == {"kernel": 1, "bias": 2} and get_path(tree, ("blocks", 0, "bias")) == 2
