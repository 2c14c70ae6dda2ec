"""The sandbox's first process: `python -I -S launcher.py CONFIG_JSON`, run by llm.sandbox.run.

It sets up what must be set up from inside (namespaces, mounts, uid, rlimits) and then execs a
fresh `python -I -S main.py` on the untrusted source. A script rather than `preexec_fn`, which
is unsafe in a process with threads (SandboxPool). Standard library only; imports nothing of llm.
A setup step that fails writes one line to stderr and exits SETUP_FAILED, so the caller's probe
can try a weaker mode.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys

SETUP_FAILED = 125
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_RELATIME = 16384, 1 << 18, 1 << 21
_FLAG_OF_OPTION = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
                   "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}


def _fail(step: str, err: BaseException | str) -> None:
    os.write(2, f"sandbox setup failed: {step}: {err}\n".encode())
    os._exit(SETUP_FAILED)


def _libc():
    import ctypes

    return ctypes, ctypes.CDLL(None, use_errno=True)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    ctypes, libc = _libc()
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def _unshare(cfg: dict) -> None:
    flags = ((CLONE_NEWUSER if cfg["newuser"] else 0) | (CLONE_NEWNS if cfg["newns"] else 0)
             | (CLONE_NEWNET if cfg["newnet"] else 0) | (CLONE_NEWPID if cfg["newpid"] else 0))
    if not flags:
        return
    uid, gid = os.getuid(), os.getgid()
    ctypes, libc = _libc()
    if libc.unshare(flags) != 0:
        _fail("unshare", os.strerror(ctypes.get_errno()))
    if cfg["newuser"]:  # map our own uid/gid to themselves: no capabilities survive the exec
        try:
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        except OSError as e:
            _fail("user namespace id map", e)


def _mounts() -> list[tuple[str, int]]:
    """(mount point, per-mount flags) of every mount, from /proc/self/mountinfo."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")  # octal escapes such as \040
            flags = 0
            for opt in fields[5].split(","):
                flags |= _FLAG_OF_OPTION.get(opt, 0)
            out.append((point, flags))
    return out


def _private_filesystem(cfg: dict) -> None:
    """Everything read-only but a fresh size-limited tmpfs work dir (and the relocated Python)."""
    wd, owner = cfg["workdir"], cfg["drop"] or [os.getuid(), os.getgid()]
    try:
        _mount("none", "/", None, MS_REC | MS_PRIVATE)
        if cfg["relocate"]:
            _mount(cfg["relocate"]["prefix"], cfg["relocate"]["target"], None, MS_BIND | MS_REC)
        _mount("tmpfs", wd, "tmpfs", MS_NOSUID | MS_NODEV,
               f"size={cfg['workdir_bytes']},nr_inodes=4096,mode=0700,uid={owner[0]},gid={owner[1]}")
        for point, flags in _mounts():
            if point == wd or flags & MS_RDONLY:
                continue
            try:
                _mount(None, point, None, MS_BIND | MS_REMOUNT | MS_RDONLY | flags)
            except FileNotFoundError:  # under another mount: unreachable anyway
                pass
        os.chdir(wd)
        with open(cfg["source"], "rb") as src, open("main.py", "wb") as dst:
            dst.write(src.read())
        if cfg["drop"]:
            os.chown("main.py", *cfg["drop"])
    except OSError as e:
        _fail("read-only filesystem", e)


def _wait(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue


def _exit_like(status: int) -> None:
    """End this process as the wait status `status` says its child ended."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):  # SIGKILL, SIGSTOP: already default
            pass
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)  # only if the signal did not end us
    os._exit(os.WEXITSTATUS(status))


def _pid_namespace_init(cfg: dict) -> None:
    """Fork the new pid namespace's init, which forks the code as pid 2 and reports its wait
    status through a pipe; return only in the code's process. Not the code as pid 1: the kernel
    drops signals a namespace's init has no handler for (its own SIGXCPU, SIGSEGV from kill)."""
    read_end, write_end = os.pipe()
    if os.fork():  # outside the namespace: exit as the code did
        os.close(write_end)
        _wait(-1)
        with os.fdopen(read_end, "rb") as f:
            status = f.read()
        if not status:
            _fail("pid namespace init", "ended without reporting")
        _exit_like(int(status))
    os.close(read_end)
    if cfg["newns"]:  # a /proc that shows only this namespace's processes (best effort)
        try:
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
        except OSError:
            pass
    code = os.fork()
    if code == 0:
        os.close(write_end)
        return
    status = _wait(code)
    os.write(write_end, str(status).encode())
    os._exit(0)


def _limit(cfg: dict) -> None:
    lim = cfg["limits"]
    cpu = lim["cpu_s"]
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (lim["fsize"], lim["fsize"]))
        resource.setrlimit(resource.RLIMIT_NOFILE, (lim["nofile"], lim["nofile"]))
        resource.setrlimit(resource.RLIMIT_AS, (lim["as"], lim["as"]))
        # after setuid: set_user() flags a process already over RLIMIT_NPROC and execve would fail
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    except (OSError, ValueError) as e:
        _fail("rlimit", e)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # _exit_like may re-raise SIGSEGV here
    _unshare(cfg)
    if cfg["newns"]:
        _private_filesystem(cfg)
    else:
        os.chdir(cfg["workdir"])
    if cfg["newpid"]:
        _pid_namespace_init(cfg)
    if cfg["drop"]:
        try:
            os.setgroups([])
            os.setgid(cfg["drop"][1])
            os.setuid(cfg["drop"][0])
        except OSError as e:
            _fail("drop privileges", e)
    _limit(cfg)
    exe = cfg["exe"]
    try:
        os.execve(exe, [exe, "-I", "-S", "main.py"], dict(os.environ))
    except OSError as e:
        _fail("exec", e)


if __name__ == "__main__":
    main()
