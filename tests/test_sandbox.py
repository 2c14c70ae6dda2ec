"""llm.sandbox: untrusted code is contained (time, memory, processes, files, network, env)."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from llm.errors import ConfigError
from llm.sandbox import SandboxLimits, SandboxPool, SandboxResult, isolation, run_code
from llm.sandbox.process import _status

SHORT = SandboxLimits(timeout_s=1.0)
PRINT_HOME = "import os; print(os.environ['HOME'], flush=True)\n"


def _processes_with_home(home: str) -> list[int]:
    """Pids of live processes whose environment has HOME=home (a sandbox's children)."""
    needle = f"HOME={home}\0".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_isolation_reports_a_working_sandbox():
    flags = isolation()
    assert flags["ok"] and flags["rlimits"] and flags["process_group"]
    assert all(isinstance(v, bool) for v in flags.values())


def test_ok_run_returns_stdout_and_reads_stdin():
    result = run_code("import sys\nprint('hi', sys.stdin.read()[::-1])", stdin="abc")
    assert result == SandboxResult("ok", 0, "hi cba\n", "", result.seconds)
    assert result.ok


def test_raising_program_is_an_error_with_its_exception():
    result = run_code("raise ValueError('boom 42')")
    assert result.status == "error" and result.returncode == 1 and not result.ok
    assert "ValueError: boom 42" in result.stderr


def test_infinite_loop_is_killed_at_the_deadline():
    start = time.monotonic()
    result = run_code(PRINT_HOME + "while True: pass", SHORT)
    assert result.status == "timeout"
    assert time.monotonic() - start < SHORT.timeout_s + 1.5
    assert not _processes_with_home(result.stdout.strip())


@pytest.mark.parametrize("attempt", ["os.fork()", "import subprocess; subprocess.run(['sleep', '30'])"])
def test_fork_is_contained(attempt):
    source = PRINT_HOME + (f"try:\n    {attempt}\nexcept OSError as e:\n    print('refused', e.errno)\n"
                           "else:\n    print('escaped')\n")
    result = run_code(source, SHORT)
    assert "refused" in result.stdout and "escaped" not in result.stdout, result
    assert not _processes_with_home(result.stdout.split()[0])


def test_memory_bomb_ends_as_memory():
    result = run_code("b = bytearray(2 * 1024**3)\nprint('allocated')", SandboxLimits(memory_mb=256))
    assert result.status == "memory", result
    assert "allocated" not in result.stdout


def test_cannot_write_outside_its_work_dir(tmp_path):
    flags = isolation()
    if not (flags["readonly_filesystem"] or flags["dropped_privileges"]):
        pytest.skip("no mount namespace and the code runs as our uid: only file permissions protect tmp_path")
    target = tmp_path / "escape.txt"
    source = f"import os\nopen('inside.txt', 'w').write('x')\nprint(os.getcwd())\nopen({str(target)!r}, 'w').write('x')"
    result = run_code(source)
    assert result.status == "error" and ("Read-only" in result.stderr or "Permission denied" in result.stderr)
    assert not target.exists()
    assert not os.path.exists(result.stdout.strip())  # the work dir (written fine) is gone


def test_cannot_connect_to_a_listening_port():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        result = run_code(f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                          "except OSError as e:\n    print('blocked', e)\nelse:\n    print('connected')")
    if not isolation()["network_namespace"]:
        pytest.skip("no network namespace on this machine: the sandbox does not block the network")
    assert result.stdout.startswith("blocked"), result


def test_cannot_see_outside_processes():
    if not isolation()["pid_namespace"]:
        pytest.skip("no pid namespace on this machine")
    source = f"import os\ntry:\n    os.kill({os.getpid()}, 0)\nexcept ProcessLookupError:\n    print('invisible')"
    result = run_code(source)
    assert result.stdout == "invisible\n", result


def test_environment_is_empty_of_ours(monkeypatch):
    monkeypatch.setenv("LLM_SANDBOX_SECRET", "do-not-leak")
    result = run_code("import json, os\nprint(json.dumps(dict(os.environ)))")
    env = json.loads(result.stdout)
    assert set(env) <= {"HOME", "TMPDIR", "LANG", "LC_CTYPE", "LD_LIBRARY_PATH"}, env
    assert "do-not-leak" not in result.stdout


def test_output_is_capped():
    result = run_code("import sys\nprint('a' * 100000)\nsys.stderr.write('b' * 100000 + 'END')",
                      SandboxLimits(max_output_bytes=1000))
    assert result.ok and result.stdout.startswith("a" * 1000) and result.stdout.count("a") == 1000
    assert result.stderr.endswith("END") and len(result.stderr) < 1100


def test_pool_runs_programs_in_parallel():
    sleep = "import time\ntime.sleep(0.5)\nprint('done')"
    start = time.monotonic()
    with SandboxPool(4, SandboxLimits(timeout_s=10.0)) as pool:
        results = pool.map([sleep] * 4)
    elapsed = time.monotonic() - start
    assert [r.stdout for r in results] == ["done\n"] * 4
    assert elapsed < 4 * 0.5, f"4 x 0.5 s sleeps took {elapsed:.2f} s: not parallel"


def test_status_of_signals_and_memory():
    assert _status(-24, False, b"") == "timeout"  # SIGXCPU: RLIMIT_CPU
    assert _status(-9, False, b"") == "killed"
    assert _status(-9, True, b"") == "timeout"
    assert _status(1, False, b"Traceback ...\nMemoryError\n") == "memory"
    assert _status(1, False, b"Traceback ...\nValueError: MemoryError\n") == "error"


@pytest.mark.parametrize("bad", [dict(timeout_s=0), dict(memory_mb=8), dict(cpu_s=0), dict(max_output_bytes=-1)])
def test_bad_limits_are_config_errors(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        SandboxLimits(**bad)
