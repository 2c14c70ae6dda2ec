"""launch/xpk.sh: the dry run prints cluster creation, the workload (with restarts, the image
and the command), log following, waiting and deletion; with fake xpk/gcloud/kubectl on PATH
an existing cluster is reused and a failed workload's exit code comes back."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch" / "xpk.sh"
BASE = ["--cluster", "c1", "--workload", "run-8b", "--zone", "us-east5-a", "--tpu-type", "v5p-64", "--project", "proj"]
TRAIN = ["llm", "train", "--config", "configs/llama3_8b.py", "--workdir", "gs://b/run"]


def run(args, env=None):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


def test_dry_run_prints_every_step():
    out = run(["--dry-run", *BASE, "--spot", "--max-restarts", "50", "--delete", "--", *TRAIN])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    where = "--zone us-east5-a --project proj"
    selector = "jobset.sigs.k8s.io/jobset-name=run-8b,jobset.sigs.k8s.io/job-index=0,batch.kubernetes.io/job-completion-index=0"
    assert lines == [
        "gcloud container clusters list --project proj --filter=name=c1 '--format=value(name)'",
        f"xpk cluster create --cluster c1 --tpu-type v5p-64 --num-slices 1 {where} --spot",
        f"xpk workload create --cluster c1 --workload run-8b --tpu-type v5p-64 --num-slices 1 {where} "
        f"--max-restarts 50 --base-docker-image python:3.11-slim --script-dir {REPO} --command "
        "'bash -c '\\''set -e; python3 -m pip install -q -r requirements-tpu.txt && python3 -m pip install -q -e . "
        "&& llm train --config configs/llama3_8b.py --workdir gs://b/run'\\'''",
        f"kubectl wait --for=condition=Ready pod --selector {selector} --timeout=24h",
        f"kubectl logs --follow --selector {selector} --tail=-1",
        f"xpk workload list --cluster c1 {where} --wait-for-job-completion run-8b",
        f"xpk workload delete --cluster c1 --workload run-8b {where}",
    ]


def test_prebuilt_image_replaces_layering():
    out = run(["--dry-run", *BASE, "--docker-image", "gcr.io/p/llm:1", "--", *TRAIN])
    create = next(l for l in out.stdout.splitlines() if l.startswith("xpk workload create"))
    assert "--docker-image gcr.io/p/llm:1 --command" in create and "--script-dir" not in create


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workload", "w", "--zone", "z", "--tpu-type", "v5p-8", "--", "llm"], "--cluster is required"),
        (["--cluster", "c", "--workload", "Bad_Name", "--zone", "z", "--tpu-type", "v5p-8", "--", "llm"], "must be lowercase"),
        (["--cluster", "c", "--workload", "w", "--zone", "z", "--", "llm"], "--tpu-type is required"),
        (["--cluster", "c", "--workload", "w", "--zone", "z", "--tpu-type", "v5p-8", "--num-slices", "0", "--", "llm"], "--num-slices=0"),
    ],
)
def test_bad_arguments_are_one_line_errors(args, message):
    out = run(["--dry-run", *args])
    assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_existing_cluster_is_reused_and_the_workload_status_is_returned(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "log"
    fakes = {
        "gcloud": 'echo c1',
        "kubectl": 'true',
        "xpk": 'case "$*" in *wait-for-job-completion*) exit 125 ;; esac',
    }
    for name, body in fakes.items():
        (bin_dir / name).write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> "{log}"\n{body}\n')
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    out = run([*BASE, "--", *TRAIN], env)
    assert out.returncode == 125
    calls = [" ".join(line.split()[:3]) for line in log.read_text().splitlines()]
    assert calls == ["gcloud container clusters", "xpk workload create", "kubectl wait --for=condition=Ready",
                     "kubectl logs --follow", "xpk workload list"]
    assert "reusing cluster c1" in out.stderr and "did not succeed (exit 125)" in out.stderr
