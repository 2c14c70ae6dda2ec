"""Disk errors while writing a run (a full disk, a quota, a disk gone read-only) as one line
naming the path and the fix, instead of pages of Orbax / TensorStore tracebacks.

A save first checks that the disk has room for it (`check_free_space`): once Orbax's writer
threads fail they print pages of tracebacks nobody can stop. A disk that fills during the save is
still caught by `disk_errors(directory)` around the Orbax calls; TensorStore reports the OS error
only in the text of a ValueError, so both the errno and the text are recognised.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np

from llm.errors import UserError

# errno -> what the user can do about it, for errors writing the workdir while the run goes on.
_DISK_FIXES = {
    errno.ENOSPC: "free space on that disk (or lower checkpoint.keep), then re-run the same command to resume from the last checkpoint",
    errno.EDQUOT: "free space within your quota, then re-run the same command to resume from the last checkpoint",
    errno.EROFS: "the disk became read-only; remount it writable or copy the workdir elsewhere and re-run there",
    errno.EACCES: "make the workdir writable again, then re-run the same command to resume",
}
_DISK_TEXT = {os.strerror(code): code for code in _DISK_FIXES}


def _disk_errno(err: BaseException) -> int | None:
    """The errno of a disk error anywhere in the chain; TensorStore reports them only as text."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _DISK_FIXES:
            return err.errno
        for text, code in _DISK_TEXT.items():
            if text in str(err):
                return code
        err = err.__cause__ or err.__context__
    return None


def disk_error(err: BaseException, path: str | Path, doing: str = "saving a checkpoint") -> UserError | None:
    """A one-line UserError for a full, read-only or forbidden disk under `err`, else None."""
    code = _disk_errno(err)
    if code is None:
        return None
    return UserError(f"{doing} to {str(path)!r} failed: {os.strerror(code)}; {_DISK_FIXES[code]}")


@contextlib.contextmanager
def disk_errors(path: str | Path, doing: str = "saving a checkpoint") -> Iterator[None]:
    """Turn a full / read-only disk inside the block into `disk_error`'s one line (others pass)."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - Orbax and TensorStore wrap OSErrors in many types
        converted = disk_error(err, path, doing)
        if converted is None:
            raise
        raise converted from err


def check_free_space(directory: str | Path, tree: Any, doing: str = "saving a checkpoint") -> None:
    """Refuse a save the disk has no room for, before anything is written.

    The estimate is the arrays' bytes (float weights barely compress). Single-process runs only:
    processes that disagreed would leave the others waiting in Orbax's collective save."""
    if jax.process_count() > 1:
        return
    path = Path(directory)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        return
    need = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "dtype"))
    free = shutil.disk_usage(existing).free
    if free < need:
        raise UserError(
            f"{doing} to {str(path)!r} needs about {need / 2**20:.1f} MiB but the disk has {free / 2**20:.1f} MiB free; "
            f"{_DISK_FIXES[errno.ENOSPC]}"
        )
