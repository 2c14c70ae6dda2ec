"""Silence the echo of a damaged checkpoint's abandoned reads.

When one shard of a checkpoint fails to read, Orbax raises and abandons its other pending reads;
when those are finalised, Python prints each one's exception ("Exception ignored in: <coroutine
...>") and asyncio logs "Task exception was never retrieved", each with a TensorStore spec
dozens of lines long; TensorStore reads that finish after Orbax closed its event loop report
"Event loop is closed". The failure itself is already reported (a fallback warning or a one-line
error), so that echo is only noise.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
from types import TracebackType
from typing import Iterator


def _through_orbax(tb: TracebackType | None) -> bool:
    while tb is not None:
        if "/orbax/" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _late_tensorstore_callback(unraisable) -> bool:
    """TensorStore finishing an abandoned read after Orbax closed its event loop: the callback's
    `call_soon_threadsafe` raises 'Event loop is closed' with no object to name."""
    tb = unraisable.exc_traceback
    names = set()
    while tb is not None:
        names.add(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return (unraisable.object is None and isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed" and "call_soon_threadsafe" in names)


class _DropOrbaxTaskErrors(logging.Filter):
    """asyncio's report of a task whose exception nobody retrieved, when the task was Orbax's."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and _through_orbax(record.exc_info[2]))


_ASYNCIO_FILTER = _DropOrbaxTaskErrors()


@contextlib.contextmanager
def quiet_abandoned_reads() -> Iterator[None]:
    """Drop Orbax's unraisable exceptions while the block runs and, if the block raised, for the
    rest of the process (the abandoned reads may stay referenced by Orbax's event loop until
    interpreter exit). Every other unraisable exception and asyncio error is still reported."""
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if not (_through_orbax(unraisable.exc_traceback) or _late_tensorstore_callback(unraisable)):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    except BaseException:
        logging.getLogger("asyncio").addFilter(_ASYNCIO_FILTER)  # a no-op when already there
        gc.collect()  # finalise what can be finalised now, under the hook, which stays
        raise
    sys.unraisablehook = previous
