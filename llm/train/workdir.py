"""A workdir holds one run: its config, logs, metrics, checkpoints and plots.

Re-running the same command resumes; running a different config into it is refused unless the
user asks to overwrite, and even then the old run is moved aside, not deleted.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path

import ml_collections

from llm.errors import UserError

CONFIG_FILE = "config.json"
# Keys a resumed run may change without becoming a different run.
RESUMABLE_KEYS = ("train.steps", "train.log_every", "train.eval_every", "train.eval_steps", "checkpoint", "data.num_workers",
                  "distributed")  # how the processes find each other (per-process ids, ports) is not the run


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


def prepare_workdir(workdir: str | Path, config: ml_collections.ConfigDict, overwrite: bool = False, write: bool = True) -> Path:
    """Create the workdir, refuse a different run in it, and record the config."""
    workdir = Path(workdir)
    config_path = workdir / CONFIG_FILE
    new = json.loads(config.to_json_best_effort())
    if config_path.exists():
        old = json.loads(config_path.read_text())
        diffs = _differences(_strip(old), _strip(new))
        if diffs and not overwrite:
            shown = "; ".join(diffs[:3]) + (f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else "")
            raise UserError(
                f"workdir {str(workdir)!r} holds a run with a different config ({shown}); "
                "use another --workdir, or pass --overwrite to move the old run aside"
            )
        if diffs and overwrite and write:
            aside = workdir / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}"
            aside.mkdir(parents=True)
            for item in list(workdir.iterdir()):
                if not item.name.startswith("replaced-"):
                    shutil.move(str(item), aside / item.name)
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
