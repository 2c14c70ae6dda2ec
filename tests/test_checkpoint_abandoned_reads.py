"""The echo of a damaged checkpoint's abandoned Orbax reads is dropped; everything else is kept."""

import logging
import sys
from types import SimpleNamespace

import pytest

from llm.checkpoint.abandoned_reads import quiet_abandoned_reads


def _error_raised_in(filename: str, exc: BaseException) -> BaseException:
    """An exception whose traceback runs through a frame of `filename`."""
    namespace = {}
    exec(compile("def fail(exc):\n    raise exc\n", filename, "exec"), namespace)
    try:
        namespace["fail"](exc)
    except BaseException as err:  # noqa: BLE001
        return err
    raise AssertionError("unreachable")


def _unraisable(err: BaseException, obj=None):
    return SimpleNamespace(exc_type=type(err), exc_value=err, exc_traceback=err.__traceback__, err_msg=None, object=obj)


def test_orbax_echo_is_dropped_after_a_failed_read_and_the_rest_is_kept(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    orbax_err = _error_raised_in("/site-packages/orbax/checkpoint/serialization.py", Exception("reading array index"))
    mine = _error_raised_in("/work/mine.py", ValueError("mine"))
    with pytest.raises(OSError):
        with quiet_abandoned_reads():
            raise OSError("truncated")
    sys.unraisablehook(_unraisable(orbax_err))  # after the failure too: the hook stays
    sys.unraisablehook(_unraisable(RuntimeError("Event loop is closed")))  # no call_soon_threadsafe frame: kept
    sys.unraisablehook(_unraisable(mine))
    assert [u.exc_value for u in seen] == [seen[0].exc_value, mine] and str(seen[0].exc_value) == "Event loop is closed"
    record = logging.LogRecord("asyncio", logging.ERROR, "", 0, "Task exception was never retrieved", None,
                               (type(orbax_err), orbax_err, orbax_err.__traceback__))
    assert not logging.getLogger("asyncio").filter(record)
    other = logging.LogRecord("asyncio", logging.ERROR, "", 0, "x", None, (type(mine), mine, mine.__traceback__))
    assert logging.getLogger("asyncio").filter(other)


def test_a_successful_read_restores_the_previous_hook(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    with quiet_abandoned_reads():
        pass
    assert sys.unraisablehook == seen.append
