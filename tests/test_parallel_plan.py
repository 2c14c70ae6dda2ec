"""llm.parallel.plan: how a process joins the job, decided from config + environment alone
(explicit coordinator, SLURM, Open MPI, Cloud TPU, single), and one-line errors for bad settings."""

from __future__ import annotations

import pytest

from llm.config.base import base_config
from llm.errors import ConfigError
from llm.parallel.plan import count_tpu_chips, plan_from_config, slurm_first_host


def dist_cfg(**fields):
    cfg = base_config().distributed
    for key, value in fields.items():
        cfg[key] = value
    return cfg


def test_single_process_when_nothing_is_set():
    plan = plan_from_config(dist_cfg(), env={}, tpu_chips=0)
    assert plan.kind == "single" and not plan.multi_process


def test_explicit_coordinator():
    plan = plan_from_config(
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
    plan = plan_from_config(dist_cfg(), env=env, tpu_chips=0)
    assert plan.kind == "slurm"
    assert plan.coordinator_address == f"gpu007:{61440 + 4097 % 4096}"
    assert (plan.num_processes, plan.process_id) == (4, 2)
    env["JAX_COORDINATOR_PORT"] = "9999"
    assert plan_from_config(dist_cfg(), env=env, tpu_chips=0).coordinator_address == "gpu007:9999"


def test_single_task_slurm_job_is_single_process():
    env = {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_JOB_NODELIST": "n1"}
    assert plan_from_config(dist_cfg(), env=env, tpu_chips=0).kind == "single"


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
    assert slurm_first_host(nodelist) == first


def test_open_mpi_environment():
    env = {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1", "JAX_COORDINATOR_ADDRESS": "h0:1234"}
    plan = plan_from_config(dist_cfg(), env=env, tpu_chips=0)
    assert (plan.kind, plan.coordinator_address, plan.num_processes, plan.process_id) == ("ompi", "h0:1234", 2, 1)
    env = {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1", "MASTER_ADDR": "h1", "MASTER_PORT": "77"}
    assert plan_from_config(dist_cfg(), env=env, tpu_chips=0).coordinator_address == "h1:77"
    with pytest.raises(ConfigError, match="JAX_COORDINATOR_ADDRESS"):
        plan_from_config(dist_cfg(), env={"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0"}, tpu_chips=0)


def test_cloud_tpu_is_detected_from_chips_or_gke_env():
    assert plan_from_config(dist_cfg(), env={}, tpu_chips=4).kind == "tpu"
    assert plan_from_config(dist_cfg(), env={"TPU_WORKER_HOSTNAMES": "a,b"}, tpu_chips=0).kind == "tpu"
    assert plan_from_config(dist_cfg(mode="off"), env={}, tpu_chips=4).kind == "single"


def test_tpu_chip_count_reads_pci_vendor(tmp_path):
    for i, vendor in enumerate(["0x1ae0", "0x10de", "0x1ae0"]):
        (tmp_path / f"0000:00:0{i}.0").mkdir()
        (tmp_path / f"0000:00:0{i}.0" / "vendor").write_text(vendor + "\n")
    assert count_tpu_chips(str(tmp_path)) == 2


@pytest.mark.parametrize(
    "fields, env, message",
    [
        ({"num_processes": 4}, {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_JOB_NODELIST": "n"}, "SLURM_NTASKS says 2"),
        ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, {}, "process_id=2 is not in"),
        ({"coordinator_address": "h:1", "num_processes": 0}, {}, "num_processes=0"),
        ({"coordinator_address": "nohostport", "num_processes": 2, "process_id": 0}, {}, "'nohostport' is not HOST:PORT"),
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
        plan_from_config(cfg, env=env, tpu_chips=0)
    assert "\n" not in str(err.value) and message in str(err.value)
