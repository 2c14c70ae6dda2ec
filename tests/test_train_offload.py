"""optim.offload_state: Adam's moments live in host memory between steps, the step brings them
to the devices for the update, and a run is the same run: same numbers, same checkpoints."""

import json

import jax
import numpy as np
import pytest

from helpers import random_batch, tiny_config
from llm.checkpoint.manager import Checkpointer
from llm.errors import ConfigError
from llm.pytree import abstract_like
from llm.train.setup import HOST_MEMORY, build_setup, check_host_memory

SHORT = ("data.seq_len=32", "train.eval_every=0", "mesh.data=2", "mesh.fsdp=2")


def moment_kinds(opt_state) -> set[str]:
    """Memory kinds of the optimizer state's array leaves larger than a scalar (the moments)."""
    return {leaf.sharding.memory_kind for leaf in jax.tree_util.tree_leaves(opt_state) if leaf.ndim}


def run_steps(offload: bool, batches):
    config = tiny_config(*SHORT, f"optim.offload_state={offload}")
    setup, state = build_setup(config, devices=jax.devices()[:4])
    losses = []
    for batch in batches:
        state, metrics = setup.train_step(state, setup.shard_batch(batch), {})
        losses.append(float(metrics["loss"]))
    return config, setup, state, losses


def test_offloaded_state_stays_on_the_host_and_trains_identically(tmp_path):
    batches = [random_batch(256, 8, 32, seed=s) for s in range(3)]
    _, _, reference, expected = run_steps(False, batches)
    config, setup, state, losses = run_steps(True, batches)
    assert moment_kinds(reference.opt_state) == {"device"}
    assert moment_kinds(state.opt_state) == {HOST_MEMORY}  # after three steps, still on the host
    assert losses == expected  # the same computation: bit for bit
    for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(reference)), jax.tree_util.tree_leaves(jax.device_get(state))):
        np.testing.assert_array_equal(a, b)

    ckpt = Checkpointer(tmp_path, config)
    ckpt.save(3, state, {"position": 3}, {"config": json.loads(config.to_json_best_effort())})
    ckpt.close()
    restored, _, _, step = Checkpointer(tmp_path, config).restore(abstract_like(state))
    assert step == 3 and moment_kinds(restored.opt_state) == {HOST_MEMORY}
    for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(state)), jax.tree_util.tree_leaves(jax.device_get(restored))):
        np.testing.assert_array_equal(a, b)
    _, after_restore = setup.train_step(restored, setup.shard_batch(batches[0]), {})
    _, after_state = setup.train_step(state, setup.shard_batch(batches[0]), {})
    assert float(after_restore["loss"]) == float(after_state["loss"])


def test_a_backend_without_host_memory_is_refused():
    class Device:
        platform = "metal"

        def addressable_memories(self):
            return [type("Memory", (), {"kind": "device"})()]

    class Mesh:
        devices = np.array([Device()])

    with pytest.raises(ConfigError, match="offload_state=True needs pinned_host memory and metal devices offer device"):
        check_host_memory(Mesh())
