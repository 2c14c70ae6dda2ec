"""Multi-process start-up: one JAX process per host (TPU VM worker, GPU node, or local CPU process).

`initialize(config)` decides from the `distributed` config section and the environment how
this process joins the job (Cloud TPU auto-detection, SLURM, Open MPI, an explicit coordinator,
or a single process), checks that every process agrees on the job's shape, and then calls
`jax.distributed.initialize`. JAX itself aborts the whole process (no Python exception) when the
coordinator never answers, and it silently accepts processes started with different process
counts; a small TCP rendezvous on the coordinator port before JAX's own turns both into one-line
`UserError`s. The helpers below it make data feeding process-aware: each process supplies only
the rows its devices hold and `global_batch` assembles the global `jax.Array`.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding

from llm.errors import ConfigError, UserError
from llm.parallel.mesh import build_mesh

MODES = ("auto", "off", "explicit", "slurm", "ompi", "tpu")
_GOOGLE_PCI_VENDOR = "0x1ae0"
_HELLO = "llm-rendezvous-v1"


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


# ---------------------------------------------------------------------------------------------
# Deciding the plan (pure: config + environment in, plan out).


def slurm_first_host(nodelist: str) -> str:
    """First host of a SLURM node list: 'gpu[003-007,9],cpu1' -> 'gpu003'."""
    nodelist = nodelist.strip()
    comma, bracket = nodelist.find(","), nodelist.find("[")
    if bracket == -1 or (comma != -1 and comma < bracket):
        return nodelist.split(",")[0]
    prefix = nodelist[:bracket]
    first = nodelist[bracket + 1 :].split("]")[0].split(",")[0].split("-")[0]
    return prefix + first


def _split_address(address: str, what: str) -> tuple[str, int]:
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
    """Decide how this process joins the job. `auto` tries, in order: an explicit coordinator,
    SLURM (srun with several tasks), Open MPI (mpirun with several ranks), Cloud TPU (chips on
    PCI or GKE's TPU_WORKER_HOSTNAMES), else one process."""
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
        _split_address(plan.coordinator_address, "the coordinator address")
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


# ---------------------------------------------------------------------------------------------
# Rendezvous: every process checks in with process 0 before JAX's own (fatal-on-error) connect.


def _listen(port: int) -> socket.socket:
    if socket.has_dualstack_ipv6():
        server = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True, reuse_port=False)
    else:
        server = socket.create_server(("", port))
    return server


def _serve(plan: DistributedPlan, deadline: float) -> None:
    """Process 0: accept one hello per other process, check ids and counts, then release all."""
    _, port = _split_address(plan.coordinator_address, "distributed.coordinator_address")
    try:
        server = _listen(port)
    except OSError as err:
        raise UserError(f"cannot listen on coordinator port {port} ({err.strerror}); pick a free port") from None
    peers: dict[int, socket.socket] = {}
    try:
        while len(peers) < plan.num_processes - 1:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(set(range(1, plan.num_processes)) - set(peers))
                raise UserError(
                    f"only {len(peers) + 1} of {plan.num_processes} processes reached the coordinator "
                    f"{plan.coordinator_address} within {plan.timeout_s}s (missing process ids {missing}); "
                    "start every process with the same coordinator and process count"
                )
            server.settimeout(min(left, 1.0))
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            conn.settimeout(max(deadline - time.monotonic(), 0.1))
            try:
                words = conn.makefile("r").readline().split()
            except (OSError, UnicodeDecodeError):
                conn.close()
                continue
            if len(words) != 3 or words[0] != _HELLO:
                conn.close()  # something else knocked on the port; ignore it
                continue
            pid, count = int(words[1]), int(words[2])
            problem = ""
            if count != plan.num_processes:
                problem = (
                    f"process {pid} was started with num_processes={count} but process 0 with "
                    f"{plan.num_processes}; start every process with the same count"
                )
            elif not 0 < pid < plan.num_processes or pid in peers:
                problem = f"process id {pid} is out of range or used twice; give each process its own id in [1, {plan.num_processes})"
            if problem:
                conn.sendall(f"error {problem}\n".encode())
                conn.close()
                raise UserError(problem)
            peers[pid] = conn
        for conn in peers.values():
            conn.sendall(b"ok\n")
        for conn in peers.values():  # let the peers close first, so the port has no TIME_WAIT here
            conn.settimeout(5.0)
            try:
                conn.recv(1)
            except OSError:
                pass
    finally:
        for conn in peers.values():
            conn.close()
        server.close()


def _join(plan: DistributedPlan, deadline: float) -> None:
    """Any other process: reach process 0 (retrying until the deadline) and wait for its answer."""
    host, port = _split_address(plan.coordinator_address, "distributed.coordinator_address")
    conn = None
    while conn is None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise UserError(
                f"coordinator {plan.coordinator_address} did not answer within {plan.timeout_s}s "
                f"(this is process {plan.process_id} of {plan.num_processes}); check that process 0 runs "
                "there and the port is open, or raise distributed.initialization_timeout"
            )
        try:
            conn = socket.create_connection((host, port), timeout=min(left, 2.0))
        except OSError:
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
    with conn:
        conn.sendall(f"{_HELLO} {plan.process_id} {plan.num_processes}\n".encode())
        conn.settimeout(max(deadline - time.monotonic(), 0.1))
        try:
            reply = conn.makefile("r").readline().strip()
        except OSError:
            reply = ""
    if reply.startswith("error "):
        raise UserError(reply[len("error ") :])
    if reply != "ok":
        raise UserError(
            f"coordinator {plan.coordinator_address} did not gather all {plan.num_processes} processes "
            f"within {plan.timeout_s}s; start every process with the same coordinator and process count"
        )


def rendezvous(plan: DistributedPlan) -> None:
    """Block until all processes of `plan` have checked in, or raise a one-line UserError."""
    deadline = time.monotonic() + plan.timeout_s
    if plan.process_id == 0:
        _serve(plan, deadline)
    else:
        _join(plan, deadline)


# ---------------------------------------------------------------------------------------------
# Side effects: join the job.


def initialize(config: ml_collections.ConfigDict, env: Mapping[str, str] | None = None) -> DistributedPlan:
    """Join the multi-process job described by `config.distributed` and the environment.

    Call once, before any JAX computation. A single-process plan changes nothing.
    """
    plan = plan_from_config(config.distributed, env)
    if not plan.multi_process:
        return plan
    if jax.distributed.is_initialized():
        return plan
    if plan.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", plan.cpu_collectives)
    if plan.kind == "tpu":
        jax.distributed.initialize(initialization_timeout=plan.timeout_s)
        return plan
    rendezvous(plan)
    jax.distributed.initialize(
        coordinator_address=plan.coordinator_address,
        num_processes=plan.num_processes,
        process_id=plan.process_id,
        initialization_timeout=plan.timeout_s,
        cluster_detection_method="deactivate",
    )
    return plan


def global_mesh(config: ml_collections.ConfigDict) -> Mesh:
    """The config's mesh over every device of every process, with a job-shaped error message."""
    try:
        return build_mesh(config.mesh, jax.devices())
    except ConfigError as err:
        if jax.process_count() == 1:
            raise
        raise ConfigError(
            f"{err} (the job has {jax.process_count()} processes x {jax.local_device_count()} local devices)"
        ) from None


def barrier(name: str, timeout_s: int = 600) -> None:
    """Wait until every process reaches `name` (unique per call), through JAX's coordination
    service rather than a device collective.

    CPU collectives (gloo) give a late process only 30 s to join a collective's first use, so
    processes that compile at different speeds should meet here after compiling and before the
    first step runs.
    """
    if jax.process_count() == 1:
        return
    from orbax.checkpoint import multihost

    multihost.get_barrier_sync_fn()(key=name, timeout_ms=int(timeout_s * 1000))


def allgather_json(value: Any) -> list[Any]:
    """Every process's JSON-serialisable `value`, in process order, on every process.

    For per-process state that one writer must save, e.g. each process's data iterator position
    (Orbax writes JSON items from process 0 only). Call on all processes together.
    """
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int32))).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
    return [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, lengths)]


def is_main_process() -> bool:
    """Logging, metrics, plots and reports come from process 0 only."""
    return jax.process_index() == 0


def local_rows(sharding: NamedSharding, global_shape: tuple[int, ...]) -> tuple[int, int]:
    """[start, stop) of the leading (batch) axis this process's devices hold.

    Each process reads only these rows of every global batch; the mesh puts a process's devices
    next to each other, so the range is contiguous (checked).
    """
    starts, stops = [], []
    for index in sharding.addressable_devices_indices_map(global_shape).values():
        rows = index[0] if index else slice(None)
        start, stop, _ = rows.indices(global_shape[0])
        starts.append(start)
        stops.append(stop)
    lo, hi = min(starts), max(stops)
    covered = np.zeros(hi - lo, bool)
    for start, stop in zip(starts, stops):
        covered[start - lo : stop - lo] = True
    if not covered.all():
        raise ConfigError(
            f"this process's devices hold non-contiguous batch rows of {global_shape}; "
            "put the batch axes (data, fsdp) first in the mesh"
        )
    return lo, hi


def global_batch(local: Mapping[str, np.ndarray], sharding: NamedSharding, global_rows: int) -> dict[str, Any]:
    """Assemble global `jax.Array`s from this process's rows (see `local_rows`)."""
    out = {}
    for name, value in local.items():
        global_shape = (global_rows, *value.shape[1:])
        lo, hi = local_rows(sharding, global_shape)
        if value.shape[0] != hi - lo:
            raise UserError(
                f"batch field {name!r} has {value.shape[0]} local rows but this process holds rows "
                f"[{lo}, {hi}) of {global_rows}; read exactly those rows"
            )
        out[name] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out
