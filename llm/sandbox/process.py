"""One sandboxed run in a given isolation Mode: temp dir, launcher subprocess, capped output,
deadline, process-group kill, status mapping. Which Mode works here is llm.sandbox.detect's job."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

from llm.sandbox import launcher
from llm.sandbox.limits import FILE_SIZE_BYTES, OPEN_FILES, WORKDIR_BYTES, SandboxLimits, SandboxResult

NOBODY = (65534, 65534)
_TAIL_BYTES = 4096  # of stderr, kept apart for classifying the exit (MemoryError is its last line)
_MEMORY_HINT = re.compile(rb"(^|\n)MemoryError\b[^\n]*\n?\s*$|Cannot allocate memory|out of memory")


@dataclasses.dataclass(frozen=True)
class Mode:
    """Which isolation the launcher sets up (each needs the kernel's and our privileges' consent)."""

    newuser: bool = False  # a user namespace (unprivileged route to the others)
    newns: bool = False  # a mount namespace: everything read-only but a tmpfs work dir
    newnet: bool = False  # a network namespace: only a down loopback
    newpid: bool = False  # a pid namespace: the code sees and signals no outside process
    drop: bool = False  # running as root: become nobody (RLIMIT_NPROC does not bind root)

    @property
    def relocate(self) -> bool:
        """Root dropping to nobody inside a mount namespace binds Python's prefix into the sandbox's
        base dir, since nobody may not reach it where it is (e.g. under a 0700 /root)."""
        return self.drop and self.newns


def base_python() -> tuple[str, str]:
    """(interpreter, prefix) without any venv: the sandbox runs with -S, so only the stdlib."""
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    return exe, os.path.realpath(sys.base_prefix)


def execute(source: str, limits: SandboxLimits, stdin: str, mode: Mode) -> SandboxResult:
    base = tempfile.mkdtemp(prefix="llm-sandbox-")
    start = time.monotonic()
    try:
        os.chmod(base, 0o711)  # traversable (the dropped uid reaches its work dir), not listable
        proc, stdin_file = _start(base, source, limits, stdin, mode)
        try:
            out, err, tail, timed_out = _collect(proc, start + limits.timeout_s, limits.max_output_bytes)
        finally:
            _kill_group(proc.pid)  # before reaping: the group id cannot be reused yet
            proc.wait()
            if stdin_file is not None:
                stdin_file.close()
        seconds = time.monotonic() - start
        status = _status(proc.returncode, timed_out, tail)
        return SandboxResult(status, proc.returncode, out, err, seconds)
    finally:
        _remove(base)


def _start(base: str, source: str, limits: SandboxLimits, stdin: str, mode: Mode):
    exe, prefix = base_python()
    workdir = os.path.join(base, "work")
    os.mkdir(workdir, 0o700)
    if mode.drop:
        os.chown(workdir, *NOBODY)
    # with a mount namespace the launcher copies the source into the tmpfs work dir it mounts
    src = os.path.join(base if mode.newns else workdir, "main.py")
    with open(src, "w", encoding="utf-8") as f:
        f.write(source)
    env = {"HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
    relocate, child_exe = None, exe
    if mode.relocate and os.path.commonpath([exe, prefix]) == prefix:
        target = os.path.join(base, "python")
        os.mkdir(target, 0o755)
        relocate = {"prefix": prefix, "target": target}
        child_exe = os.path.join(target, os.path.relpath(exe, prefix))
        env["LD_LIBRARY_PATH"] = os.path.join(target, "lib")  # a libpython found by absolute RUNPATH
    cfg = {
        "workdir": workdir, "source": src, "exe": child_exe, "relocate": relocate,
        "newuser": mode.newuser, "newns": mode.newns, "newnet": mode.newnet, "newpid": mode.newpid,
        "drop": list(NOBODY) if mode.drop else None, "workdir_bytes": WORKDIR_BYTES,
        "limits": {"as": limits.memory_mb << 20, "cpu_s": limits.cpu_seconds, "fsize": FILE_SIZE_BYTES,
                   "nofile": OPEN_FILES},
    }
    stdin_file = None
    if stdin:
        stdin_file = tempfile.TemporaryFile()
        stdin_file.write(stdin.encode())
        stdin_file.seek(0)
    proc = subprocess.Popen(
        [exe, "-I", "-S", launcher.__file__, json.dumps(cfg)],
        stdin=stdin_file if stdin_file is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=base, env=env,
        start_new_session=True, close_fds=True,
    )
    return proc, stdin_file


class _Capped:
    """The first `cap` bytes (and, with keep_tail, the last cap/2 in place of the second half)."""

    def __init__(self, cap: int, keep_tail: bool):
        self.cap, self.keep_tail = cap, keep_tail
        self.head, self.tail, self.total = bytearray(), bytearray(), 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        head_cap = self.cap - self.cap // 2 if self.keep_tail else self.cap
        room = head_cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if self.keep_tail and data:
            self.tail = (self.tail + data)[-max(self.cap // 2, _TAIL_BYTES):]

    def last(self) -> bytes:
        return bytes(self.head[-_TAIL_BYTES:] + self.tail)[-_TAIL_BYTES:]

    def text(self) -> str:
        shown_tail = self.tail[-(self.cap // 2):] if self.cap // 2 else b""
        dropped = self.total - len(self.head) - len(shown_tail)
        if dropped <= 0 and not shown_tail:
            return self.head.decode("utf-8", "replace")
        body = bytes(self.head)
        if dropped > 0:
            body += f"\n[... {dropped} bytes dropped ...]\n".encode()
        return (body + bytes(shown_tail)).decode("utf-8", "replace")


def _collect(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[str, str, bytes, bool]:
    """Read both pipes until they close, keeping what the caps allow; kill the group at the deadline."""
    out, err = _Capped(cap, keep_tail=False), _Capped(cap, keep_tail=True)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    timed_out, killed_at = False, None
    try:
        while sel.get_map():
            now = time.monotonic()
            if not timed_out and now >= deadline:
                timed_out, killed_at = True, now
                _kill_group(proc.pid)
            if timed_out and now - killed_at > 2.0:  # someone outside the group holds the pipes
                break
            for key, _ in sel.select(timeout=1.0 if timed_out else deadline - now):
                data = os.read(key.fd, 65536)
                if data:
                    key.data.add(data)
                else:
                    sel.unregister(key.fileobj)
    finally:
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
    if not timed_out:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:  # closed its pipes and carried on
            timed_out = True
    return out.text(), err.text(), err.last(), timed_out


def _status(returncode: int, timed_out: bool, stderr_tail: bytes) -> str:
    if timed_out:
        return "timeout"
    if returncode == 0:
        return "ok"
    if returncode == -signal.SIGXCPU:  # RLIMIT_CPU: a time budget too
        return "timeout"
    if _MEMORY_HINT.search(stderr_tail):
        return "memory"
    return "killed" if returncode < 0 else "error"


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _remove(path: str) -> None:
    """rmtree that also gets through dirs the code made unwritable (chmod 000) for us."""

    def fix(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, stat.S_IRWXU)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix)
