"""launch/local.sh: the dry run prints venv creation (only when missing), the install and the
quickstart command with the workdir and extra arguments passed through."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch" / "local.sh"


def run(*args):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_dry_run_creates_a_missing_venv_installs_and_runs_the_quickstart(tmp_path):
    venv = tmp_path / "venv"
    out = run("--dry-run", "--venv", str(venv), "--python", "python3.11")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"python3.11 -m venv {venv}",
        f"{venv}/bin/python -m pip install --quiet --upgrade pip",
        f"{venv}/bin/python -m pip install --quiet -e '.[test]'",
        f"{venv}/bin/llm quickstart --workdir runs/quickstart",
    ]


def test_dry_run_reuses_an_existing_venv_and_passes_arguments(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "python").chmod(0o755)
    out = run("--dry-run", "--venv", str(tmp_path), "--workdir", "my runs/q", "--", "--steps", "5")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert not any(" -m venv " in line for line in lines)
    assert lines[-1] == f"{tmp_path}/bin/llm quickstart --workdir 'my runs/q' --steps 5"


def test_unknown_option_is_a_one_line_error():
    out = run("--dry-run", "--wrkdir", "x")
    assert out.returncode == 2 and out.stderr.strip() == "local.sh: error: unknown option --wrkdir; see --help"
