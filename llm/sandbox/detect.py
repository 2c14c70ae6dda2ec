"""Which isolation this machine allows, found once per process on first use (never at import):
try the strongest Mode, run a probe program in it, and fall back until one works. The probe
measures what the code really can do (fork, write outside, see interfaces) rather than trusting
that a setup call succeeded."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import uuid

from llm.sandbox.limits import SandboxLimits
from llm.sandbox.process import Mode, execute

_PROBE = """
import json, os, socket
r = {"uid": os.getuid()}
try:
    pid = os.fork()
except OSError:
    r["fork"] = False
else:
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    r["fork"] = True
try:
    with open(%r, "w") as f:
        f.write("x")
    r["write_outside"] = True
except OSError:
    r["write_outside"] = False
r["interfaces"] = sorted(name for _, name in socket.if_nameindex())
print(json.dumps(r))
"""
_PROBE_LIMITS = SandboxLimits(timeout_s=20.0, memory_mb=512)
_lock = threading.Lock()
_found: tuple[Mode, dict[str, bool]] | None = None


def candidates() -> list[Mode]:
    """Strongest first. Root enters namespaces directly and drops to nobody; anyone else needs a
    user namespace for them. Without namespaces only rlimits (and, for root, nobody) remain."""
    if not sys.platform.startswith("linux"):
        return [Mode(drop=True), Mode()] if os.geteuid() == 0 else [Mode()]
    if os.geteuid() == 0:
        return [Mode(newns=True, newnet=True, newpid=True, drop=True), Mode(newnet=True, newpid=True, drop=True),
                Mode(drop=True), Mode(newns=True, newnet=True, newpid=True), Mode()]
    return [Mode(newuser=True, newns=True, newnet=True, newpid=True),
            Mode(newuser=True, newnet=True, newpid=True), Mode()]


def probe(mode: Mode) -> dict | None:
    """What code can do in `mode`; None when the mode does not start here."""
    outside = os.path.join(tempfile.gettempdir(), f"llm-sandbox-probe-{uuid.uuid4().hex}")
    try:
        result = execute(_PROBE % outside, _PROBE_LIMITS, "", mode)
    finally:
        if os.path.exists(outside):
            os.remove(outside)
    if result.status != "ok":
        return None
    try:
        return json.loads(result.stdout)
    except ValueError:
        return None


def _flags(mode: Mode, seen: dict | None) -> dict[str, bool]:
    ok = seen is not None
    return {
        "ok": ok,  # the sandbox runs code at all
        "rlimits": ok,  # RLIMIT_AS, CPU, FSIZE, NOFILE, NPROC=0, CORE=0 in the child
        "process_group": ok,  # own session; the whole group is SIGKILLed at the deadline
        "no_fork": ok and not seen["fork"],  # os.fork / subprocess fail inside (checked)
        "network_namespace": ok and mode.newnet and seen["interfaces"] == ["lo"],  # only a down loopback
        "pid_namespace": ok and mode.newpid,  # cannot see or signal outside processes
        "readonly_filesystem": ok and not seen["write_outside"],  # writes outside the work dir fail (checked)
        "tmpfs_workdir": ok and mode.newns,  # work dir is a WORKDIR_BYTES tmpfs
        "user_namespace": ok and mode.newuser,
        "dropped_privileges": ok and mode.drop and seen["uid"] != 0,  # root ran the code as nobody
    }


def current() -> tuple[Mode, dict[str, bool]]:
    """The Mode run_code uses and what it enforces (probed once per process, thread-safe)."""
    global _found
    with _lock:
        if _found is None:
            for mode in candidates():
                seen = probe(mode)
                if seen is not None:
                    _found = (mode, _flags(mode, seen))
                    break
            else:
                _found = (Mode(), _flags(Mode(), None))
        return _found


def isolation() -> dict[str, bool]:
    """What is enforced on this machine, e.g. {"network_namespace": True, "no_fork": True, ...}."""
    return dict(current()[1])
