"""Shared pieces of the fine-tuning CLI tests: a small built-in corpus (a few standard-library
packages), a briefly pretrained `tiny` to start from, and `llm` commands run in a subprocess on
one CPU device (the test session simulates eight)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from llm.data.builtin import build_builtin
from llm.data.sources import stdlib_files, stdlib_root

PACKAGES = ("json", "email", "asyncio", "logging", "importlib", "concurrent")
FAST = ("--config.train.measure_peak=false",)

# Runs several `llm` commands in one interpreter (imports and TensorFlow's start-up are paid
# once) and reports each command's exit code and stderr as a JSON line on stdout.
_DRIVER = """
import contextlib, io, json, sys
from llm.cli.main import main
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    print("@@" + json.dumps({"code": code, "stderr": err.getvalue()}), flush=True)
"""


def build_corpus(out: Path) -> Path:
    root = str(stdlib_root())
    files = [f for f in stdlib_files() if Path(f).relative_to(root).parts[0] in PACKAGES]
    build_builtin(out, files=files)
    return out / "manifest.json"


def llm_session(*commands: list[str], timeout: int = 900) -> list[tuple[int, str]]:
    """(exit code, stderr) of each `llm` command, run one after another in one subprocess."""
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    out = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps([list(c) for c in commands])],
                         capture_output=True, text=True, timeout=timeout, env=env)
    results = [json.loads(line[2:]) for line in out.stdout.splitlines() if line.startswith("@@")]
    assert len(results) == len(commands), out.stderr[-3000:]
    return [(r["code"], r["stderr"]) for r in results]


def pretrain(manifest: Path, workdir: Path, steps: int = 30) -> Path:
    [(code, err)] = llm_session(["train", "--config", "configs/tiny.py", "--workdir", str(workdir), f"--config.data.path={manifest}",
                                 f"--config.train.steps={steps}", "--config.train.eval_every=0", *FAST])
    assert code == 0, err[-3000:]
    return workdir


_STARTS: dict[str, tuple[Path, Path]] = {}


def corpus_and_start(tmp_path_factory) -> tuple[Path, Path]:
    """(manifest, pretrained workdir), built once per test session and shared by the test files."""
    if "start" not in _STARTS:
        root = tmp_path_factory.mktemp("finetune")
        manifest = build_corpus(root / "corpus")
        _STARTS["start"] = (manifest, pretrain(manifest, root / "pre"))
    return _STARTS["start"]
