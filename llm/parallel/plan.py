"""How this process joins a job, decided from the `distributed` config section and the
environment alone (pure: no sockets, no JAX), so every launcher's case is testable on one machine.

`auto` tries, in order: an explicit coordinator, SLURM (srun with several tasks), Open MPI
(mpirun with several ranks), Cloud TPU (chips on PCI or GKE's TPU_WORKER_HOSTNAMES), else one
process. `llm.parallel.distributed.initialize` acts on the plan.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from pathlib import Path
from typing import Mapping

import ml_collections

from llm.errors import ConfigError

MODES = ("auto", "off", "explicit", "slurm", "ompi", "tpu")
_GOOGLE_PCI_VENDOR = "0x1ae0"


@dataclasses.dataclass(frozen=True)
class DistributedPlan:
    """How this process joins the job; `kind` is single | explicit | slurm | ompi | tpu."""

    kind: str
    coordinator_address: str = ""
    num_processes: int = 1
    process_id: int = 0
    timeout_s: int = 300
    cpu_collectives: str = "gloo"

    @property
    def multi_process(self) -> bool:
        return self.kind == "tpu" or self.num_processes > 1


def slurm_first_host(nodelist: str) -> str:
    """First host of a SLURM node list: 'gpu[003-007,9],cpu1' -> 'gpu003'."""
    nodelist = nodelist.strip()
    comma, bracket = nodelist.find(","), nodelist.find("[")
    if bracket == -1 or (comma != -1 and comma < bracket):
        return nodelist.split(",")[0]
    prefix = nodelist[:bracket]
    first = nodelist[bracket + 1 :].split("]")[0].split(",")[0].split("-")[0]
    return prefix + first


def split_address(address: str, what: str) -> tuple[str, int]:
    """HOST:PORT (HOST may be a bracketed IPv6 address) -> (host, port), or a one-line ConfigError."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what}={address!r} is not HOST:PORT; write e.g. 10.0.0.2:8476")
    return host, int(port)


def _env_int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except (KeyError, ValueError):
        raise ConfigError(f"environment variable {name}={env.get(name)!r} is not an integer") from None


def count_tpu_chips(pci_root: str = "/sys/bus/pci/devices") -> int:
    """Google TPU chips attached through PCI (what JAX itself checks); 0 off Cloud TPU."""
    count = 0
    for vendor in glob.glob(os.path.join(pci_root, "*", "vendor")):
        try:
            if Path(vendor).read_text().strip() == _GOOGLE_PCI_VENDOR:
                count += 1
        except OSError:
            continue
    return count


def _check_count(cfg_count: int, env_count: int, source: str) -> None:
    if cfg_count > 0 and cfg_count != env_count:
        raise ConfigError(
            f"distributed.num_processes={cfg_count} but {source} says {env_count} processes; "
            "remove the setting or make them agree"
        )


def _slurm_plan(cfg: ml_collections.ConfigDict, env: Mapping[str, str], timeout: int, coll: str) -> DistributedPlan:
    count, pid = _env_int(env, "SLURM_NTASKS"), _env_int(env, "SLURM_PROCID")
    _check_count(cfg.num_processes, count, "SLURM_NTASKS")
    address = cfg.coordinator_address or env.get("JAX_COORDINATOR_ADDRESS", "")
    if not address:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
        if not nodes:
            raise ConfigError("SLURM job without SLURM_JOB_NODELIST; set distributed.coordinator_address=HOST:PORT")
        port = env.get("JAX_COORDINATOR_PORT") or str(61440 + _env_int(env, "SLURM_JOB_ID") % 4096)
        address = f"{slurm_first_host(nodes)}:{port}"
    return DistributedPlan("slurm", address, count, pid, timeout, coll)


def _ompi_plan(cfg: ml_collections.ConfigDict, env: Mapping[str, str], timeout: int, coll: str) -> DistributedPlan:
    count, pid = _env_int(env, "OMPI_COMM_WORLD_SIZE"), _env_int(env, "OMPI_COMM_WORLD_RANK")
    _check_count(cfg.num_processes, count, "OMPI_COMM_WORLD_SIZE")
    address = cfg.coordinator_address or env.get("JAX_COORDINATOR_ADDRESS", "")
    if not address and env.get("MASTER_ADDR"):
        address = f"{env['MASTER_ADDR']}:{env.get('MASTER_PORT', '8476')}"
    if not address:
        raise ConfigError(
            "Open MPI job without a coordinator; export JAX_COORDINATOR_ADDRESS=HOST:PORT (rank 0's host) "
            "or set distributed.coordinator_address"
        )
    return DistributedPlan("ompi", address, count, pid, timeout, coll)


def _explicit_plan(cfg: ml_collections.ConfigDict, env: Mapping[str, str], timeout: int, coll: str) -> DistributedPlan:
    address = cfg.coordinator_address or env.get("JAX_COORDINATOR_ADDRESS", "")
    if not address:
        raise ConfigError("distributed.mode='explicit' needs distributed.coordinator_address=HOST:PORT")
    if cfg.num_processes < 1:
        raise ConfigError(
            f"distributed.num_processes={cfg.num_processes} with coordinator {address!r}; "
            "set it to the number of processes in the job"
        )
    if not 0 <= cfg.process_id < cfg.num_processes:
        raise ConfigError(
            f"distributed.process_id={cfg.process_id} is not in [0, {cfg.num_processes}); "
            "give each process its own id, 0 for the coordinator's host"
        )
    return DistributedPlan("explicit", address, cfg.num_processes, cfg.process_id, timeout, coll)


def plan_from_config(
    cfg: ml_collections.ConfigDict, env: Mapping[str, str] | None = None, tpu_chips: int | None = None
) -> DistributedPlan:
    """Decide how this process joins the job (the order `auto` tries is in the module docstring).

    `env` defaults to os.environ and `tpu_chips` to the chips on this machine's PCI bus."""
    env = os.environ if env is None else env
    mode = cfg.mode
    if mode not in MODES:
        raise ConfigError(f"distributed.mode={mode!r} is not one of {', '.join(map(repr, MODES))}")
    timeout = int(cfg.initialization_timeout)
    if timeout < 1:
        raise ConfigError(f"distributed.initialization_timeout={timeout} must be at least 1 second")
    coll = cfg.cpu_collectives
    if coll not in ("gloo", "mpi", ""):
        raise ConfigError(f"distributed.cpu_collectives={coll!r} is not one of 'gloo', 'mpi', ''")
    if mode == "off":
        return DistributedPlan("single", timeout_s=timeout, cpu_collectives=coll)
    explicit = bool(cfg.coordinator_address) or (bool(env.get("JAX_COORDINATOR_ADDRESS")) and cfg.num_processes > 0)
    in_slurm = all(k in env for k in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID"))
    in_ompi = "OMPI_COMM_WORLD_SIZE" in env and "OMPI_COMM_WORLD_RANK" in env
    plan = None
    if mode == "explicit" or (mode == "auto" and explicit and not (in_slurm or in_ompi)):
        plan = _explicit_plan(cfg, env, timeout, coll)
    elif mode == "slurm" or (mode == "auto" and in_slurm and _env_int(env, "SLURM_NTASKS") > 1):
        if not in_slurm:
            raise ConfigError("distributed.mode='slurm' but SLURM_JOB_ID/SLURM_NTASKS/SLURM_PROCID are not set; run under srun")
        plan = _slurm_plan(cfg, env, timeout, coll)
    elif mode == "ompi" or (mode == "auto" and in_ompi and _env_int(env, "OMPI_COMM_WORLD_SIZE") > 1):
        if not in_ompi:
            raise ConfigError("distributed.mode='ompi' but OMPI_COMM_WORLD_SIZE/RANK are not set; run under mpirun")
        plan = _ompi_plan(cfg, env, timeout, coll)
    if plan is not None:
        split_address(plan.coordinator_address, "the coordinator address")
        return plan
    chips = count_tpu_chips() if tpu_chips is None else tpu_chips
    if mode == "tpu" or (mode == "auto" and (chips > 0 or env.get("TPU_WORKER_HOSTNAMES"))):
        return DistributedPlan("tpu", timeout_s=timeout, cpu_collectives=coll)
    if cfg.num_processes > 1:
        raise ConfigError(
            f"distributed.num_processes={cfg.num_processes} but no coordinator; "
            "set distributed.coordinator_address=HOST:PORT"
        )
    return DistributedPlan("single", timeout_s=timeout, cpu_collectives=coll)

