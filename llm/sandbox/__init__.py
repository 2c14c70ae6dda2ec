"""Run untrusted Python (generated code: RL rewards, pass@k) in a subprocess that cannot hurt us.

What is enforced where (the first run in a process probes, strongest first, and
`isolation()` reports what a probe program really could and could not do):

Everywhere: `python -I -S` (no PYTHON* variables, no site-packages: stdlib only) in its own
session, the whole process group SIGKILLed at the wall-clock deadline (`timeout_s`) and reaped;
an empty environment (HOME and TMPDIR = the work dir, LANG=C.UTF-8, plus LD_LIBRARY_PATH when
Python is relocated, below); a fresh temporary work dir as cwd, removed afterwards; stdin from
the given string or /dev/null; stdout and stderr through pipes, each capped at
`max_output_bytes` (stderr keeps its head and its tail; a marker says how much was dropped).
Rlimits in the child: RLIMIT_AS = memory_mb, RLIMIT_CPU = cpu_s (hard +1 s), RLIMIT_FSIZE
16 MiB, RLIMIT_NOFILE 64, RLIMIT_CORE 0, RLIMIT_NPROC 0 (fork, subprocess and threads fail
with EAGAIN; the kernel ignores RLIMIT_NPROC for root, hence the uid drop below).

Linux as root: new mount, network and pid namespaces, then the code runs as nobody
(uid/gid 65534). Mount namespace: every mount is remounted read-only (in the sandbox's own
namespace only) but the work dir, a 32 MiB tmpfs; /proc shows only the sandbox's processes;
Python's prefix is bind-mounted read-only into the sandbox (nobody may not reach e.g. /root).
Network namespace: only a loopback that is down, so every connection fails. Pid namespace: the
code sees and can signal no process outside (`kill(-1)` reaches nothing).

Linux as another user, where unprivileged user namespaces are allowed: the same namespaces
inside a user namespace that maps the user to itself (no capabilities survive the exec); the
code keeps the caller's uid, so it reads what the caller may read.

Linux without namespaces (user namespaces disabled, containers without CAP_SYS_ADMIN) and
macOS: rlimits only (and nobody for root on Linux, when nobody can run Python where it is):
writes outside the work dir are stopped only by file permissions, the network is reachable, and
a non-root caller's code runs as the caller's uid. macOS does not enforce RLIMIT_AS (untested).

Not a boundary against kernel exploits (no seccomp); the code can read every file its uid may
(world-readable files); CPU time is limited, CPU share and the tmpfs's memory are not.
"""

from llm.sandbox.detect import isolation
from llm.sandbox.limits import SandboxLimits, SandboxResult
from llm.sandbox.run import SandboxPool, run_code

__all__ = ["SandboxLimits", "SandboxPool", "SandboxResult", "isolation", "run_code"]
