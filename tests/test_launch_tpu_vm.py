"""launch/tpu_vm.sh: the dry run prints the exact gcloud commands; with a scripted fake
`gcloud` on PATH the real control flow creates, reuses, detects preemption, recreates and
re-runs the same command, and stops on a genuine failure."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch" / "tpu_vm.sh"
TRAIN = ["llm", "train", "--config", "configs/llama3_8b.py", "--workdir", "gs://b/run", "--config.data.path=gs://b/c/*.txt"]


def run(args, env=None):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


def test_dry_run_creates_copies_installs_runs_and_deletes():
    out = run(["--dry-run", "--name", "my-v5p", "--zone", "us-east5-a", "--type", "v5p-64",
               "--project", "proj", "--delete", "--", *TRAIN])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    where = "--zone us-east5-a --project proj"
    assert lines[0] == f"gcloud compute tpus tpu-vm describe my-v5p {where} '--format=value(state)'"
    assert lines[1] == f"gcloud compute tpus tpu-vm create my-v5p {where} --accelerator-type v5p-64 --version v2-alpha-tpuv5"
    assert lines[2].startswith("tar -czf ") and "--exclude=./.venv" in lines[2] and lines[2].endswith(f"-C {REPO} .")
    assert lines[3].startswith("gcloud compute tpus tpu-vm scp ") and f"my-v5p:llm-code.tar.gz --worker=all {where}" in lines[3]
    assert lines[4].startswith(f"gcloud compute tpus tpu-vm ssh my-v5p --worker=all {where} --command ")
    assert "pip install -q -r requirements-tpu.txt" in lines[4]
    assert lines[5].startswith(f"gcloud compute tpus tpu-vm ssh my-v5p --worker=all {where} --command ")
    # The command reaches every worker intact (the glob stays quoted), worker 0 streams it.
    assert "llm train --config configs/llama3_8b.py --workdir gs://b/run '\\''--config.data.path=gs://b/c/*.txt'\\''" in lines[5]
    assert "tee -a run.log" in lines[5] and "agent-worker-number" in lines[5]
    assert lines[6] == f"gcloud compute tpus tpu-vm delete my-v5p {where} --quiet"
    assert len(lines) == 7


def test_dry_run_queued_resource_on_spot_v5e():
    out = run(["--dry-run", "--name", "q1", "--zone", "us-west4-a", "--type", "v5e-16", "--queued", "--spot", "--", "llm", "train"])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "gcloud compute tpus queued-resources describe q1 --zone us-west4-a '--format=value(state.state)'"
    assert lines[1] == (
        "gcloud compute tpus queued-resources create q1 --node-id q1 --zone us-west4-a "
        "--accelerator-type v5litepod-16 --runtime-version v2-alpha-tpuv5-lite --spot"
    )
    assert not any("delete" in line for line in lines)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--zone", "z", "--", "llm"], "--name is required"),
        (["--name", "n", "--", "llm"], "--zone is required"),
        (["--name", "n", "--zone", "z"], "give the command to run after --"),
        (["--name", "n", "--zone", "z", "--type", "v9-8", "--", "llm"], "unknown --type v9-8"),
        (["--name", "n", "--zone", "z", "--bogus", "--", "llm"], "unknown option --bogus"),
    ],
)
def test_bad_arguments_are_one_line_errors(args, message):
    out = run(["--dry-run", *args])
    assert out.returncode == 2
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1


FAKE_GCLOUD = """#!/usr/bin/env bash
echo "gcloud $*" >> "$FAKE_LOG"
pop() { local v; v=$(head -n1 "$1"); sed -i 1d "$1"; echo "$v"; }
case "$*" in
  *" describe "*) s=$(pop "$FAKE_STATES"); [ "$s" = "-" ] && exit 1; echo "$s" ;;
  *"--command set -o pipefail"*) exit "$(pop "$FAKE_CODES")" ;;
esac
exit 0
"""


@pytest.fixture
def fake_cloud(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("gcloud", FAKE_GCLOUD), ("tar", '#!/usr/bin/env bash\necho "tar $*" >> "$FAKE_LOG"\n')):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", POLL_SECONDS="0", TMPDIR=str(tmp_path),
               FAKE_LOG=str(tmp_path / "log"), FAKE_STATES=str(tmp_path / "states"), FAKE_CODES=str(tmp_path / "codes"))

    def launch(states, codes, *extra):
        (tmp_path / "states").write_text("\n".join(states) + "\n")
        (tmp_path / "codes").write_text("\n".join(map(str, codes)) + "\n")
        (tmp_path / "log").write_text("")
        out = run(["--name", "t", "--zone", "z", "--type", "v5p-64", *extra, "--", "llm", "train", "--workdir", "gs://b/r"], env)
        calls = [line.split()[4] if line.startswith("gcloud") else "tar" for line in (tmp_path / "log").read_text().splitlines()]
        return out, calls

    return launch


def test_preemption_recreates_the_tpu_and_reruns_the_same_command(fake_cloud):
    # missing -> create -> ready; the run fails; the TPU is PREEMPTED -> delete, create, ready; the rerun succeeds.
    out, calls = fake_cloud(["-", "READY", "PREEMPTED", "PREEMPTED", "READY"], [1, 0])
    assert out.returncode == 0, out.stderr
    assert calls == [
        "describe", "create", "describe", "tar", "scp", "ssh", "ssh",
        "describe", "describe", "delete", "create", "describe", "tar", "scp", "ssh", "ssh",
    ]
    assert "was preempted (state PREEMPTED): restart 1 of 5" in out.stderr


def test_a_failing_command_on_a_healthy_tpu_is_not_retried(fake_cloud):
    out, calls = fake_cloud(["READY", "READY", "READY"], [3])
    assert out.returncode == 3
    assert calls == ["describe", "describe", "tar", "scp", "ssh", "ssh", "describe"]
    assert "failed with exit code 3 on a healthy TPU; not retrying" in out.stderr


def test_gives_up_after_max_restarts_and_still_deletes(fake_cloud):
    out, calls = fake_cloud(["READY", "READY", "PREEMPTED", "PREEMPTED", "READY", "PREEMPTED"], [1, 1], "--max-restarts", "1", "--delete")
    assert out.returncode == 1
    assert "giving up after 1 restarts" in out.stderr
    assert calls[-1] == "delete" and calls.count("create") == 1
