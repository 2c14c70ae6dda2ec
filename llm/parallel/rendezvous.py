"""A TCP rendezvous on the coordinator port before JAX's own connect.

JAX aborts the whole process (no Python exception) when the coordinator never answers, and it
silently accepts processes started with different process counts. Every process first checks in
with process 0 here, which turns both into one-line `UserError`s naming the fix.
"""

from __future__ import annotations

import socket
import time

from llm.errors import UserError
from llm.parallel.plan import DistributedPlan, split_address

_HELLO = "llm-rendezvous-v1"


def _listen(port: int) -> socket.socket:
    if socket.has_dualstack_ipv6():
        server = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True, reuse_port=False)
    else:
        server = socket.create_server(("", port))
    return server


def _serve(plan: DistributedPlan, deadline: float) -> None:
    """Process 0: accept one hello per other process, check ids and counts, then release all."""
    _, port = split_address(plan.coordinator_address, "distributed.coordinator_address")
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
    host, port = split_address(plan.coordinator_address, "distributed.coordinator_address")
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
