"""llm.parallel.distributed: the start-up plan from config + environment, the rendezvous that
turns JAX's fatal connection errors into one-line messages, and a real 2-process CPU job
(loopback, gloo, 4 simulated devices each) computing over one 8-device mesh."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from llm.config.base import base_config
from llm.errors import ConfigError, UserError
from llm.parallel import distributed as dist

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dist_cfg(**fields):
    cfg = base_config().distributed
    for key, value in fields.items():
        cfg[key] = value
    return cfg


# --- plan_from_config (pure) ------------------------------------------------------------------


def test_allgather_json_in_one_process_is_the_value():
    assert dist.allgather_json({"a": [1, 2]}) == [{"a": [1, 2]}]


def test_single_process_when_nothing_is_set():
    plan = dist.plan_from_config(dist_cfg(), env={}, tpu_chips=0)
    assert plan.kind == "single" and not plan.multi_process


def test_explicit_coordinator():
    plan = dist.plan_from_config(
        dist_cfg(coordinator_address="10.0.0.2:8476", num_processes=4, process_id=3), env={}, tpu_chips=0
    )
    assert (plan.kind, plan.coordinator_address, plan.num_processes, plan.process_id) == ("explicit", "10.0.0.2:8476", 4, 3)


def test_slurm_environment_gives_first_host_and_job_port():
    env = {
        "SLURM_JOB_ID": "4097",
        "SLURM_NTASKS": "4",
        "SLURM_PROCID": "2",
        "SLURM_LOCALID": "0",
        "SLURM_JOB_NODELIST": "gpu[007-010]",
    }
    plan = dist.plan_from_config(dist_cfg(), env=env, tpu_chips=0)
    assert plan.kind == "slurm"
    assert plan.coordinator_address == f"gpu007:{61440 + 4097 % 4096}"
    assert (plan.num_processes, plan.process_id) == (4, 2)
    env["JAX_COORDINATOR_PORT"] = "9999"
    assert dist.plan_from_config(dist_cfg(), env=env, tpu_chips=0).coordinator_address == "gpu007:9999"


def test_single_task_slurm_job_is_single_process():
    env = {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_JOB_NODELIST": "n1"}
    assert dist.plan_from_config(dist_cfg(), env=env, tpu_chips=0).kind == "single"


@pytest.mark.parametrize(
    "nodelist, first",
    [
        ("node001", "node001"),
        ("node001,host2", "node001"),
        ("node[001-015],host2", "node001"),
        ("node[003,007-015]", "node003"),
        ("a-b[12-13]", "a-b12"),
        ("host2,node[1-4]", "host2"),
    ],
)
def test_slurm_first_host(nodelist, first):
    assert dist.slurm_first_host(nodelist) == first


def test_open_mpi_environment():
    env = {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1", "JAX_COORDINATOR_ADDRESS": "h0:1234"}
    plan = dist.plan_from_config(dist_cfg(), env=env, tpu_chips=0)
    assert (plan.kind, plan.coordinator_address, plan.num_processes, plan.process_id) == ("ompi", "h0:1234", 2, 1)
    env = {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1", "MASTER_ADDR": "h1", "MASTER_PORT": "77"}
    assert dist.plan_from_config(dist_cfg(), env=env, tpu_chips=0).coordinator_address == "h1:77"
    with pytest.raises(ConfigError, match="JAX_COORDINATOR_ADDRESS"):
        dist.plan_from_config(dist_cfg(), env={"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0"}, tpu_chips=0)


def test_cloud_tpu_is_detected_from_chips_or_gke_env():
    assert dist.plan_from_config(dist_cfg(), env={}, tpu_chips=4).kind == "tpu"
    assert dist.plan_from_config(dist_cfg(), env={"TPU_WORKER_HOSTNAMES": "a,b"}, tpu_chips=0).kind == "tpu"
    assert dist.plan_from_config(dist_cfg(mode="off"), env={}, tpu_chips=4).kind == "single"


def test_tpu_chip_count_reads_pci_vendor(tmp_path):
    for i, vendor in enumerate(["0x1ae0", "0x10de", "0x1ae0"]):
        (tmp_path / f"0000:00:0{i}.0").mkdir()
        (tmp_path / f"0000:00:0{i}.0" / "vendor").write_text(vendor + "\n")
    assert dist.count_tpu_chips(str(tmp_path)) == 2


@pytest.mark.parametrize(
    "fields, env, message",
    [
        ({"num_processes": 4}, {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_JOB_NODELIST": "n"}, "SLURM_NTASKS says 2"),
        ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, {}, "process_id=2 is not in"),
        ({"coordinator_address": "h:1", "num_processes": 0}, {}, "num_processes=0"),
        ({"coordinator_address": "nohostport", "num_processes": 2, "process_id": 0}, {}, None),
        ({"num_processes": 2}, {}, "no coordinator"),
        ({"mode": "slurm"}, {}, "run under srun"),
        ({"mode": "bogus"}, {}, "distributed.mode='bogus'"),
        ({"initialization_timeout": 0}, {}, "initialization_timeout=0"),
        ({"cpu_collectives": "nccl"}, {}, "cpu_collectives='nccl'"),
    ],
)
def test_bad_settings_are_one_line_errors(fields, env, message):
    cfg = dist_cfg(**fields)
    with pytest.raises(ConfigError) as err:
        plan = dist.plan_from_config(cfg, env=env, tpu_chips=0)
        dist.rendezvous(plan)  # the address is checked when it is used
    assert "\n" not in str(err.value)
    if message:
        assert message in str(err.value)


# --- rendezvous ------------------------------------------------------------------------------


def _plan(port: int, pid: int, count: int, timeout: int = 5) -> dist.DistributedPlan:
    return dist.DistributedPlan("explicit", f"127.0.0.1:{port}", count, pid, timeout)


def test_coordinator_that_never_answers_times_out_with_one_line():
    port = free_port()  # nobody listens here
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        dist.rendezvous(_plan(port, pid=1, count=2, timeout=2))
    took = time.monotonic() - start
    message = str(err.value)
    assert f"coordinator 127.0.0.1:{port} did not answer within 2s" in message
    assert "\n" not in message
    assert 1.9 < took < 6


def test_coordinator_alone_times_out_naming_missing_processes():
    with pytest.raises(UserError, match=r"only 1 of 3 processes .* \(missing process ids \[1, 2\]"):
        dist.rendezvous(_plan(free_port(), pid=0, count=3, timeout=1))


def _run_all(plans):
    errors = [None] * len(plans)

    def target(i):
        try:
            dist.rendezvous(plans[i])
        except UserError as err:
            errors[i] = str(err)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(len(plans))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return errors


def test_rendezvous_gathers_all_processes():
    port = free_port()
    assert _run_all([_plan(port, i, 3) for i in range(3)]) == [None, None, None]


def test_mismatched_process_counts_fail_on_both_sides():
    port = free_port()
    errors = _run_all([_plan(port, 0, 2), _plan(port, 1, 3)])
    expected = "process 1 was started with num_processes=3 but process 0 with 2"
    assert all(e is not None and expected in e for e in errors), errors


def test_duplicate_process_ids_fail():
    port = free_port()
    errors = _run_all([_plan(port, 0, 3, timeout=5), _plan(port, 1, 3), _plan(port, 1, 3)])
    assert errors[0] is not None and "used twice" in errors[0]


# --- a real 2-process job on CPU ---------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from llm.config.base import base_config
    from llm.errors import ConfigError
    from llm.parallel import distributed as dist

    port, pid = int(sys.argv[1]), int(sys.argv[2])
    config = base_config()
    config.distributed.coordinator_address = f"127.0.0.1:{port}"
    config.distributed.num_processes = 2
    config.distributed.process_id = pid
    config.distributed.initialization_timeout = 60
    plan = dist.initialize(config)
    out = {"kind": plan.kind, "process_count": jax.process_count(), "devices": jax.device_count(),
           "local_devices": jax.local_device_count(), "main": dist.is_main_process()}

    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
    mesh = dist.global_mesh(config)
    sharding = NamedSharding(mesh, P(("data", "fsdp")))
    rows = dist.local_rows(sharding, (8, 3))
    global_rows = np.arange(24, dtype=np.float32).reshape(8, 3)
    local = {"x": global_rows[rows[0]:rows[1]]}
    x = dist.global_batch(local, sharding, 8)["x"]
    w = jax.device_put(jnp.arange(3, dtype=jnp.float32) + 1, NamedSharding(mesh, P()))
    total = jax.jit(lambda x, w: jnp.sum((x @ w) ** 2), out_shardings=NamedSharding(mesh, P()))(x, w)
    # A cross-process all-gather: every process sees every row.
    gathered = jax.jit(lambda x: x * 2, out_shardings=NamedSharding(mesh, P()))(x)
    out.update(rows=list(rows), total=float(total), gathered=np.asarray(gathered).tolist())

    import time
    if pid == 1:
        time.sleep(3)  # the late process: process 0 waits for it at the barrier
    start = time.monotonic()
    dist.barrier("after-sleep", timeout_s=60)
    out["barrier_wait"] = time.monotonic() - start
    out["gathered_json"] = dist.allgather_json({"process": pid, "text": "x" * (10 + 90 * pid)})

    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 3, 1, 1
    try:
        dist.global_mesh(config)
    except ConfigError as err:
        out["mesh_error"] = str(err)
    print("RESULT " + json.dumps(out), flush=True)
    """
)


@pytest.mark.slow
def test_two_processes_form_one_eight_device_mesh(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "TPU_", "JAX_COORD"))}
    env["PYTHONPATH"] = str(REPO)
    procs = [
        subprocess.Popen([sys.executable, str(script), str(port), str(i)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=240) for p in procs]
    results = []
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stderr[-3000:]
        line = next(l for l in stdout.splitlines() if l.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT "):]))

    import numpy as np

    x = np.arange(24, dtype=np.float32).reshape(8, 3)
    expected_total = float(np.sum((x @ np.array([1.0, 2.0, 3.0])) ** 2))
    for pid, r in enumerate(results):
        assert r["kind"] == "explicit"
        assert (r["process_count"], r["devices"], r["local_devices"]) == (2, 8, 4)
        assert r["main"] == (pid == 0)
        assert r["rows"] == [4 * pid, 4 * pid + 4]
        assert r["total"] == pytest.approx(expected_total, rel=1e-6)
        assert r["gathered"] == (2 * x).tolist()
        assert "3 devices, but 8 are available" in r["mesh_error"]
        assert "2 processes x 4 local devices" in r["mesh_error"]
    assert results[0]["barrier_wait"] > 2.0
    expected_json = [{"process": 0, "text": "x" * 10}, {"process": 1, "text": "x" * 100}]
    assert results[0]["gathered_json"] == results[1]["gathered_json"] == expected_json
