"""Compile a C++ XLA FFI kernel at first use and cache it on disk.

The kernels are built with the machine's own C++ compiler against the installed jaxlib's FFI
headers (as PyTorch's CPU inductor does), so a wheel never has to carry a binary for every CPU.
The cache key covers the source, jaxlib, machine architecture, compiler and flags; a build is
written to a temporary name and renamed into place, so a failed or concurrent build never leaves
a partial library behind.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jaxlib.version

_HEADERS = Path(__file__).parent  # amx.h and other shared kernel headers
BASE_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC")


def cache_dir() -> Path:
    """Where compiled kernels are kept: $LLM_KERNEL_CACHE, else ~/.cache/llm/kernels."""
    return Path(os.environ.get("LLM_KERNEL_CACHE") or Path.home() / ".cache" / "llm" / "kernels")


def default_compiler() -> str:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or "c++"


def compile_kernel(
    source: Path, flags: tuple[str, ...] = BASE_FLAGS, compiler: str | None = None, directory: Path | None = None
) -> Path:
    """Build `source` into a shared library named after it (reused when source, jaxlib, machine
    architecture, compiler and flags match).
    Raises RuntimeError naming the compiler and its first error line when it cannot be built."""
    compiler = compiler or default_compiler()
    include = jax.ffi.include_dir()
    text = source.read_bytes() + b"".join(h.read_bytes() for h in sorted(_HEADERS.glob("*.h")))
    stamp = " ".join((jaxlib.version.__version__, platform.machine(), compiler, *flags))
    key = hashlib.sha256(text + stamp.encode())
    directory = directory or cache_dir()
    target = directory / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".so", delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        run = subprocess.run(
            [compiler, *flags, f"-I{include}", f"-I{_HEADERS}", str(source), "-o", str(partial)],
            capture_output=True, text=True, timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"C++ compiler {compiler!r} could not run: {err}") from err
    if run.returncode != 0:
        partial.unlink(missing_ok=True)
        first = next((line for line in run.stderr.splitlines() if "error" in line.lower()), run.stderr.strip()[:200])
        raise RuntimeError(f"C++ compiler {compiler!r} failed on {source.name}: {first}")
    os.replace(partial, target)  # atomic: a concurrent build of the same key is harmless
    return target
