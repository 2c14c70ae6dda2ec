"""Context parallelism: a `sequence` mesh axis splits every sequence over devices, and attention
gathers keys and values across it. Same loss and gradients as one device; packed documents stay
apart; a sequence length the axis does not divide is refused."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from helpers import assert_trees_close_at_scale, random_batch, tiny_config
from llm.config.validate import validate_config
from llm.errors import ConfigError
from llm.train.loss import lm_loss_fn
from llm.train.setup import build_setup

SEQ = 64


def sharded_run(devices: int, *mesh: str):
    config = tiny_config(f"data.seq_len={SEQ}", "data.batch_size=4", *mesh)
    setup, state = build_setup(config, devices=jax.devices()[:devices])
    loss_fn = lm_loss_fn(setup.graphdef)
    grad = jax.jit(jax.value_and_grad(lambda p, b: loss_fn(p, {}, b, None)[0]))
    return setup, state, grad


@pytest.mark.parametrize("impl, chunk", [("xla", 0), ("blocked", 16)])  # chunk: model.loss_chunk
def test_loss_and_gradients_equal_the_single_device_run(impl, chunk):
    batch = random_batch(256, 4, SEQ, packed=True)
    results = []
    for devices, mesh in ((1, ("mesh.data=1",)), (8, ("mesh.data=2", "mesh.sequence=4"))):
        setup, state, grad = sharded_run(devices, *mesh, f"model.attention_impl={impl}", "model.attention_block=16",
                                      f"model.loss_chunk={chunk}")
        results.append(grad(state.params, setup.shard_batch(batch)))
    assert setup.batch_sharding.spec == PartitionSpec("data", "sequence")  # each device holds 16 of 64 positions
    np.testing.assert_allclose(float(results[1][0]), float(results[0][0]), rtol=1e-5)
    assert_trees_close_at_scale(jax.device_get(results[1][1]), jax.device_get(results[0][1]))


def test_packed_documents_do_not_attend_across_the_split():
    setup, state, _ = sharded_run(8, "mesh.data=2", "mesh.sequence=4")
    model = nnx.merge(setup.graphdef, state.params)
    forward = jax.jit(lambda b: model(b["inputs"], b["positions"], b["segment_ids"]))
    batch = random_batch(256, 4, SEQ, packed=True)  # document 2 starts at position 21, on the second device
    changed = {k: v.copy() for k, v in batch.items()}
    changed["inputs"][:, SEQ // 3:] = (changed["inputs"][:, SEQ // 3:] + 7) % 256
    a, b = (np.asarray(forward(setup.shard_batch(x))) for x in (batch, changed))
    np.testing.assert_array_equal(a[:, : SEQ // 3], b[:, : SEQ // 3])  # the first document never saw the second
    assert not np.allclose(a[:, SEQ // 3:], b[:, SEQ // 3:])


def test_a_sequence_axis_that_does_not_divide_the_length_is_refused():
    with pytest.raises(ConfigError, match=r"data.seq_len=60 is not divisible by mesh.sequence=8"):
        validate_config(tiny_config("data.seq_len=60", "mesh.sequence=8", "mesh.data=1"))


SPANNING_WORKER = """
import os, sys
port, pid = int(sys.argv[1]), int(sys.argv[2])
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
from llm.config.loading import load_config
from llm.errors import ConfigError
from llm.parallel.distributed import initialize
from llm.train.setup import build_setup

config = load_config("configs/tiny.py", [
    "data.source=synthetic", "mesh.data=1", "mesh.sequence=8", f"distributed.coordinator_address=127.0.0.1:{port}",
    "distributed.num_processes=2", f"distributed.process_id={pid}", "distributed.initialization_timeout=120"])
initialize(config)
try:
    build_setup(config)
except ConfigError as err:
    print("REFUSED", err, flush=True)
"""


@pytest.mark.slow  # two processes start JAX
def test_a_sequence_axis_across_processes_is_refused(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from test_parallel_distributed_train import free_port

    repo = Path(__file__).resolve().parents[1]
    script = tmp_path / "worker.py"
    script.write_text(SPANNING_WORKER)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "TPU_", "JAX_COORD"))}
    env["PYTHONPATH"] = str(repo)
    procs = [subprocess.Popen([sys.executable, str(script), str(port), str(i)], cwd=repo, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for (stdout, stderr), p in zip(outs, procs):
        assert p.returncode == 0, stderr[-3000:]
        assert "REFUSED" in stdout and "keep mesh.sequence within one process's devices (4)" in stdout, stdout
