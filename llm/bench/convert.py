"""`llm bench convert` (also `llm convert bench`): wall time and peak host memory (RSS) of
`llm convert from-hf` and `llm convert to-hf` on a random-weight model written locally (no
download).

Each conversion runs in a fresh child process; its peak RSS is the kernel's ru_maxrss for that
child (os.wait4), which counts every resident page, including mapped file pages. The target is
peak RSS <= 1.5 x the checkpoint's size on disk when the params keep the checkpoint's dtype.
The runtime's fixed footprint is reported too (the same conversion of the `tiny` preset), so
small models can be judged by what they add above it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ml_dtypes
import numpy as np

from llm.bench.convert_presets import PRESETS
from llm.interop.hf_config import hf_to_config
from llm.interop.safetensors_io import TensorEntry, write_safetensors
from llm.interop.weight_map import weight_rules
from llm.model.spec import model_spec

_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


def _random_tensor(rng: np.random.Generator, name: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
    if name.endswith("norm.weight"):
        return np.ones(shape, dtype)
    x = rng.standard_normal(shape, dtype=np.float32)
    x *= 0.02
    return x.astype(dtype, copy=False)


def write_random_hf_checkpoint(out_dir: str | Path, hf_config: dict, dtype: str = "float32",
                               max_shard_bytes: int = 2 * 1024**3, seed: int = 0) -> int:
    """A Hugging Face model directory with random weights, written tensor by tensor.

    Returns the bytes of safetensors written (the checkpoint's size on disk).
    """
    out_dir = Path(out_dir)
    spec = model_spec(hf_to_config(hf_config))
    rng = np.random.default_rng(seed)
    np_dtype = _DTYPES[dtype]
    entries = [
        TensorEntry(r.hf, r.hf_shape, np_dtype, lambda r=r: _random_tensor(rng, r.hf, r.hf_shape, np_dtype))
        for r in weight_rules(spec)
    ]
    files = write_safetensors(out_dir, entries, max_shard_bytes)
    (out_dir / "config.json").write_text(json.dumps({**hf_config, "dtype": dtype}, indent=2) + "\n")
    return sum(f.stat().st_size for f in files)


# Runs argv[2:] and writes its exit code and ru_maxrss (KiB) to argv[1]. Measuring through this
# small fresh process matters: a child's ru_maxrss includes the RSS of the process that spawned
# it at exec time (vfork), which for the benchmark itself would be the model it just wrote.
_WRAPPER = (
    "import json, os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "open(sys.argv[1], 'w').write(json.dumps([os.waitstatus_to_exitcode(status), usage.ru_maxrss]))\n"
)


def measure(argv: list[str], env: dict | None = None) -> dict:
    """Run a command in a child process; its wall time and peak RSS (its own ru_maxrss)."""
    with tempfile.TemporaryDirectory() as tmp:
        result, log_path = Path(tmp) / "rusage.json", Path(tmp) / "output.log"
        with open(log_path, "wb") as log_file:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", _WRAPPER, str(result), *argv], stdout=log_file,
                           stderr=subprocess.STDOUT, env=env, check=False)
            seconds = time.perf_counter() - start
        code, maxrss_kib = json.loads(result.read_text()) if result.exists() else (-1, 0)
        if code != 0:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{' '.join(argv)} exited with {code}:\n{tail}")
    return {"seconds": seconds, "peak_rss_bytes": maxrss_kib * 1024}


def directory_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def run_benchmark(preset: str, dtype: str, workdir: str | Path) -> dict:
    """Write the model, convert it in (from-hf) and back out (to-hf); the numbers as a dict."""
    workdir = Path(workdir)
    hf_dir, ours, back = workdir / "hf", workdir / "ours", workdir / "hf_export"
    t0 = time.perf_counter()
    size = write_random_hf_checkpoint(hf_dir, PRESETS[preset], dtype)
    write_seconds = time.perf_counter() - t0
    cli = [sys.executable, "-m", "llm.cli.main", "convert"]
    # The runtime's own footprint (interpreter, JAX client and its threads, Orbax): the same
    # conversion of a model with almost no weights.
    write_random_hf_checkpoint(workdir / "baseline_hf", PRESETS["tiny"], dtype)
    baseline = measure([*cli, "from-hf", "--src", str(workdir / "baseline_hf"), "--out", str(workdir / "baseline_ours")])
    imported = measure([*cli, "from-hf", "--src", str(hf_dir), "--out", str(ours), f"--config.precision.params={dtype}"])
    exported = measure([*cli, "to-hf", "--checkpoint", str(ours), "--out", str(back)])
    params = sum(int(np.prod(r.hf_shape)) for r in weight_rules(model_spec(hf_to_config(PRESETS[preset]))))
    return {
        "preset": preset,
        "params": params,
        "dtype": dtype,
        "checkpoint_bytes": size,
        "write_random_seconds": round(write_seconds, 2),
        "runtime_baseline_rss_bytes": baseline["peak_rss_bytes"],
        "from_hf_seconds": round(imported["seconds"], 2),
        "from_hf_peak_rss_bytes": imported["peak_rss_bytes"],
        "from_hf_rss_over_checkpoint": round(imported["peak_rss_bytes"] / size, 3),
        "params_checkpoint_bytes": directory_bytes(ours / "params"),
        "to_hf_seconds": round(exported["seconds"], 2),
        "to_hf_peak_rss_bytes": exported["peak_rss_bytes"],
        "to_hf_rss_over_checkpoint": round(exported["peak_rss_bytes"] / size, 3),
        "exported_bytes": sum(f.stat().st_size for f in back.glob("*.safetensors")),
        "cpu_count": os.cpu_count(),
    }


def run(args: argparse.Namespace) -> dict:
    """The bench target: measure in --workdir (kept) or a temporary directory; print the JSON."""
    if args.workdir:
        results = run_benchmark(args.preset, args.dtype, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="llm-convert-bench-") as tmp:
            results = run_benchmark(args.preset, args.dtype, tmp)
    print(json.dumps(results, indent=2))
    return results
