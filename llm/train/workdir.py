"""A workdir holds one run: its config, logs, metrics, checkpoints and plots.

Re-running the same command resumes; running a different config into it is refused unless the
user asks to overwrite, and even then the old run is moved aside, not deleted. Only a workdir
with a checkpoint holds a run: the leftovers of a start that failed before its first save never
block the corrected command. The layout is checked before any work, so a workdir the run could
not live in is a one-line error at start, not a traceback at the first save.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import ml_collections

from llm.checkpoint.manager import LAYOUT_KEYS
from llm.errors import UserError
from llm.train.init_sources import STORED_LAYOUT_KEYS

log = logging.getLogger("llm")

CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"
# Keys a resumed run may change without becoming a different run: how long it runs, how it logs,
# saves and reads, how the processes find each other, and how a step is laid out on the machine
# (the mesh, remat, attention kernel, loss chunks, micro-batches of the same global batch): the
# restore reshards the checkpoint onto the mesh the run has now. Layout keys that change how the
# checkpoint stores the weights (STORED_LAYOUT_KEYS) stay the run's identity.
RESUMABLE_KEYS = (
    "train.steps", "train.log_every", "train.eval_every", "train.eval_steps", "train.measure_peak", "train.grad_accum",
    "checkpoint", "data.num_workers", "distributed", "mesh", "eval",
    *(f"model.{key}" for key in LAYOUT_KEYS if key not in STORED_LAYOUT_KEYS),
)
# What the run keeps in its workdir, and whether each is a directory.
_ENTRIES = {CHECKPOINTS: True, "tokenizer": True, CONFIG_FILE: False, "metrics.jsonl": False, "train.log": False, "summary.json": False}


def _strip(config: dict) -> dict:
    out = json.loads(json.dumps(config))
    for dotted in RESUMABLE_KEYS:
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.get(part, {})
        node.pop(parts[-1], None)
    return out


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return diffs


def holds_run(workdir: Path) -> bool:
    """A workdir holds a run once it has a checkpoint (a step directory under checkpoints/)."""
    directory = workdir / CHECKPOINTS
    return directory.is_dir() and any(p.name.isdigit() and p.is_dir() for p in directory.iterdir())


def _write_probe(directory: Path, workdir: Path) -> None:
    """Create and remove a file: permissions alone do not say whether root, a read-only mount or
    an immutable directory lets the run write."""
    try:
        fd, name = tempfile.mkstemp(prefix=".llm-write-probe-", dir=directory)
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise UserError(
            f"--workdir {str(workdir)!r} is not writable ({directory}: {err.strerror or err}); "
            "make it writable or pass a --workdir on a writable disk"
        ) from None


def check_layout(workdir: str | Path) -> None:
    """One-line errors for a workdir the run cannot live in: a file in its place (or in place of
    a parent directory or of one of the run's own entries), or a place it cannot write."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"--workdir {str(workdir)!r} is a file, not a directory; pass a directory path (or move the file away)")
    existing = next(p for p in (workdir, *workdir.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"--workdir {str(workdir)!r} cannot be created: {str(existing)!r} is a file; pass a path under a directory")
    if existing == workdir:
        for name, is_dir in _ENTRIES.items():
            path = workdir / name
            if path.exists() and path.is_dir() != is_dir:
                what = "directory" if is_dir else "file"
                raise UserError(
                    f"{str(path)!r} is a {'file' if is_dir else 'directory'} where the run keeps its {name} {what}; "
                    "move it away or pass another --workdir"
                )
    _write_probe(existing, workdir)
    if (workdir / CHECKPOINTS).is_dir():
        _write_probe(workdir / CHECKPOINTS, workdir)


def _move_aside(workdir: Path) -> Path:
    aside = workdir / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir(parents=True)
    for item in list(workdir.iterdir()):
        if not item.name.startswith("replaced-"):
            shutil.move(str(item), aside / item.name)
    return aside


def _read_config(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def prepare_workdir(workdir: str | Path, config: ml_collections.ConfigDict, overwrite: bool = False, write: bool = True) -> Path:
    """Check the workdir's layout, refuse a different run in it, and record the config."""
    workdir = Path(workdir)
    check_layout(workdir)
    config_path = workdir / CONFIG_FILE
    new = json.loads(config.to_json_best_effort())
    if config_path.exists():
        old = _read_config(config_path)
        if old is None and not write:  # process 0 decides: it may be moving the file aside right now
            old = new
        diffs = ["config.json unreadable"] if old is None else _differences(_strip(old), _strip(new))
        if diffs and holds_run(workdir):
            if old is None and not overwrite:
                raise UserError(f"{str(config_path)!r} is not valid JSON; restore it, or pass --overwrite to move the old run aside")
            if not overwrite:
                shown = "; ".join(diffs[:3]) + (f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else "")
                stored = [key for key in STORED_LAYOUT_KEYS if any(d.startswith(f"model.{key}:") for d in diffs)]
                why = "".join(f"; model.{key} changes how the checkpoint stores the weights, so it cannot change on resume" for key in stored)
                raise UserError(
                    f"workdir {str(workdir)!r} holds a run with a different config ({shown}){why}; "
                    "use another --workdir, or pass --overwrite to move the old run aside"
                )
            if write:
                _move_aside(workdir)
        elif diffs and write:  # a start that failed (or stopped) before its first checkpoint holds no run
            aside = _move_aside(workdir)
            log.warning("%s held no checkpoint, only files of a start with another config: moved them to %s", workdir, aside)
    if write:
        workdir.mkdir(parents=True, exist_ok=True)
        config_path.write_text(json.dumps(new, indent=2))
    return workdir


def setup_logging(workdir: Path | None, enabled: bool = True) -> logging.Logger:
    """Log to the console and to <workdir>/train.log (process 0 only)."""
    logger = logging.getLogger("llm")
    logger.setLevel(logging.INFO if enabled else logging.WARNING)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if workdir is not None and enabled:
        file_handler = logging.FileHandler(Path(workdir) / "train.log")
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    logger.propagate = False
    return logger
