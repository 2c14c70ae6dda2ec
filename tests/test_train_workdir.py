"""The workdir as `llm train` sees it: what makes a run (a resume may change the mesh and the
step's layout), a failed start that leaves nothing blocking, and a workdir the run cannot live
in as a one-line error at start."""

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import tiny_config
from llm.errors import UserError
from llm.checkpoint.disk import check_free_space, disk_error, disk_errors
from llm.train.workdir import prepare_workdir

ARGS = [
    "--config", "configs/tiny.py", "--config.train.log_every=1", "--config.train.eval_every=0",
    "--config.data.seq_len=64", "--config.data.num_workers=0", "--config.train.measure_peak=false",
]


def llm_train(workdir, *extra: str, devices: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.run(
        [sys.executable, "-m", "llm.cli.main", "train", "--workdir", str(workdir), *ARGS, *extra],
        capture_output=True, text=True, env=env, timeout=timeout,
    )


def losses(workdir: Path) -> dict[int, float]:
    """Per-step loss; a step trained again after a resume overrides its first record."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The CLI's one-line error; no traceback anywhere."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = re.findall(r"llm train: error: [^\r\n]*", proc.stderr)  # may follow an unfinished progress bar
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.mark.slow
def test_resume_on_another_mesh_reshards_and_continues(tmp_path):
    workdir = tmp_path / "run"
    first = llm_train(workdir, "--config.train.steps=5", "--config.checkpoint.every_steps=3")
    assert first.returncode == 0, first.stderr[-3000:]
    reference = losses(workdir)
    assert sorted(reference) == [1, 2, 3, 4, 5]
    # Steps 4-5 again from checkpoint 3, on 4 devices with the weights sharded 4 ways, micro-batches
    # and remat: layout only, so the same run, and the same losses up to summation order.
    layout = ["--config.mesh.fsdp=4", "--config.train.grad_accum=2", "--config.model.remat=full"]
    second = llm_train(workdir, "--config.train.steps=5", "--config.checkpoint.restore_step=3", *layout, devices=4)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resumed from {workdir.absolute() / 'checkpoints' / '3'} (step 3)" in second.stderr
    assert "mesh {'data': 1, 'fsdp': 4, 'tensor': 1, 'sequence': 1}" in second.stderr
    resumed = losses(workdir)
    for step in (4, 5):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-4), (step, resumed[step], reference[step])
    assert reference[4] < reference[1] - 0.1  # a restart from scratch would not match


def test_scan_layers_stays_the_runs_identity(tmp_path):
    config = tiny_config()
    prepare_workdir(tmp_path, config)
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)
    with pytest.raises(UserError, match=r"model.scan_layers: False -> True\); model.scan_layers changes how the checkpoint stores"):
        prepare_workdir(tmp_path, tiny_config("model.scan_layers=true"))
    prepare_workdir(tmp_path, tiny_config("mesh.fsdp=2", "model.attention_impl=blocked", "train.grad_accum=2"))


@pytest.mark.slow
def test_a_failed_start_does_not_block_the_corrected_command(tmp_path):
    workdir = tmp_path / "run"
    missing = tmp_path / "no-such-corpus.txt"
    bad_data = llm_train(workdir, "--config.train.steps=1", f"--config.data.path={missing}")
    assert str(missing) in error_line(bad_data)
    assert (workdir / "config.json").exists()  # the failed start got as far as recording its config
    good = llm_train(workdir, "--config.train.steps=1")
    assert good.returncode == 0, good.stderr[-3000:]
    assert json.loads((workdir / "config.json").read_text())["data"]["path"] == ""
    assert sorted(losses(workdir)) == [1]
    aside = [p for p in workdir.iterdir() if p.name.startswith("replaced-")]
    assert len(aside) == 1 and (aside[0] / "config.json").exists()  # moved aside, never deleted
    # Once the workdir holds a checkpoint, another config is refused as before.
    other = llm_train(workdir, "--config.train.steps=1", "--config.optim.lr=0.1")
    assert "holds a run with a different config (optim.lr: 0.003 -> 0.1)" in error_line(other)


def test_workdir_layout_errors_name_the_path_and_the_fix(tmp_path):
    as_file = tmp_path / "file"
    as_file.write_text("x")
    line = error_line(llm_train(as_file))
    assert f"--workdir {str(as_file)!r} is a file, not a directory; pass a directory path" in line
    line = error_line(llm_train(as_file / "run"))
    assert f"{str(as_file)!r} is a file; pass a path under a directory" in line
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "checkpoints").write_text("not a directory")
    line = error_line(llm_train(workdir))
    assert f"{str(workdir / 'checkpoints')!r} is a file where the run keeps its checkpoints directory; move it away" in line


def _make_read_only(path: Path) -> bool:
    """Root ignores permission bits, so as root mark the directory immutable (chattr +i)."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        return True
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0


def test_a_read_only_workdir_is_one_line_at_start(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    if not _make_read_only(workdir):
        pytest.skip("cannot make a directory read-only here (root without chattr +i support)")
    try:
        probe = workdir / "probe"
        with pytest.raises(OSError):
            probe.write_text("x")  # what the test proves: this directory really refuses writes
        line = error_line(llm_train(workdir))
    finally:
        subprocess.run(["chattr", "-i", str(workdir)], capture_output=True) if os.geteuid() == 0 else workdir.chmod(0o755)
    assert f"--workdir {str(workdir)!r} is not writable" in line and "pass a --workdir on a writable disk" in line


def test_disk_errors_become_one_line_naming_the_path_and_the_fix(tmp_path):
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(UserError, match=r"saving a checkpoint to '/w/checkpoints' failed: No space left on device; free space"):
        with disk_errors("/w/checkpoints"):
            raise full
    # TensorStore reports the OS error only in the text of a ValueError, sometimes as the cause.
    wrapped = ValueError("Error writing local file \"/w/checkpoints/3/x\": [OS error: No space left on device]")
    assert "No space left on device" in str(disk_error(wrapped, "/w"))
    try:
        raise RuntimeError("save failed") from wrapped
    except RuntimeError as err:
        assert disk_error(err, "/w") is not None
    with pytest.raises(KeyError):  # anything else keeps its type and traceback
        with disk_errors("/w"):
            raise KeyError("bug")


def test_a_save_the_disk_has_no_room_for_is_refused_before_writing(tmp_path, monkeypatch):
    tree = {"w": np.zeros((1024, 256), np.float32)}  # 1 MiB
    check_free_space(tmp_path, tree)
    monkeypatch.setattr("shutil.disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9 - 2**19, 2**19))
    with pytest.raises(UserError, match=r"needs about 1.0 MiB but the disk has 0.5 MiB free; free space on that disk"):
        check_free_space(tmp_path / "checkpoints", tree)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_keeps_nothing_half_written(tmp_path):
    disk = tmp_path / "small-disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("needs root and permission to mount a small tmpfs")
    try:  # room for the config, tokenizer and metrics, not for the ~5 MiB train state
        line = error_line(llm_train(disk / "run", "--config.train.steps=1"))
        assert list((disk / "run" / "checkpoints").iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
    assert f"saving a checkpoint to {str(disk / 'run' / 'checkpoints')!r} needs about" in line
    assert "free space on that disk (or lower checkpoint.keep), then re-run the same command" in line
