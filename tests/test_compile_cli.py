"""`llm compile` end to end (libtpu, no TPU): tiny fits a v5e-8 and the report, JSON and HLO
land where promised; a LoRA config compiles its fine-tuning step (frozen base, adapter-only
optimizer state, fewer FLOPs); an oversized batch does not fit, exits 1 and lists the
candidates it compiled; an unknown topology or a missing libtpu is a one-line error."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def require_libtpu():
    if importlib.util.find_spec("libtpu") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install the tpu extra (libtpu) for the llm compile tests")
        pytest.skip("libtpu is not installed: pip install -e '.[tpu]'")


def llm(*args, env=None):
    return subprocess.run([sys.executable, "-m", "llm.cli.main", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=600)


@pytest.mark.slow
def test_tiny_fits_v5e_8(tmp_path):
    require_libtpu()
    out = llm("compile", "--config", "configs/tiny.py", "--topology", "v5e-8", "--workdir", str(tmp_path / "w"),
              "--json", str(tmp_path / "r.json"), "--config.mesh.fsdp=2")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "configs/tiny.py on v5e-8: 8 chips (TPU v5 lite, topology v5e:2x4), mesh data=4 x fsdp=2 x tensor=1" in out.stdout
    assert "-> fits" in out.stdout and "HBM 15.75 GiB per chip" in out.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["fits"] is True and data["hbm_bytes"] == int(15.75 * 2**30)
    assert 0 < data["per_device_bytes"] < 64 * 2**20
    assert data["step_flops"] == pytest.approx(data["tokens_per_step"] * 2.953e6, rel=1e-3)
    hlo = Path(data["hlo_paths"][0])
    assert hlo == tmp_path / "w" / "train_step.v5e-8.compiled.hlo.txt" and "ENTRY" in hlo.read_text()
    assert out.stderr.strip().splitlines()[-1] == "compiled the config as given: fits"  # libtpu stays quiet


@pytest.mark.slow
def test_lora_config_compiles_its_fine_tuning_step(tmp_path):
    require_libtpu()
    out = llm("compile", "--config", "configs/sft_lora_tiny.py", "--topology", "v5e-8", "--workdir", str(tmp_path / "w"),
              "--json", str(tmp_path / "r.json"), "--config.mesh.fsdp=2")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "fine-tuning (sft, lora r8): 38,912 trainable (7.81%), 0.46M frozen (no gradient, no optimizer state)" in out.stdout
    assert "frozen params" in out.stdout and "trainable params" in out.stdout and "-> fits" in out.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["finetune"]["method"] == "lora r8" and data["finetune"]["frozen_params"] == data["n_params"]
    memory = data["memory"]
    # The base is held frozen (f32, split 2 ways at most); AdamW moments exist for the adapters only.
    assert memory["frozen_bytes"] >= data["n_params"] * 4 / 2
    assert 2 * memory["params_bytes"] <= memory["opt_state_bytes"] < memory["frozen_bytes"] / 3
    assert memory["per_device_bytes"] >= memory["frozen_bytes"] + memory["params_bytes"] + memory["opt_state_bytes"]
    # Forward + input gradients + adapter matmuls, against 3.346M per token for full fine-tuning at seq_len 256.
    assert data["step_flops"] < 0.85 * data["tokens_per_step"] * 3.346e6


@pytest.mark.slow
def test_oversized_batch_does_not_fit_and_candidates_are_tried(tmp_path):
    require_libtpu()
    out = llm("compile", "--config", "configs/tiny.py", "--topology", "v5e-8", "--workdir", str(tmp_path),
              "--json", str(tmp_path / "r.json"), "--max-candidates", "1", "--config.data.batch_size=262144")
    assert out.returncode == 1, out.stderr[-3000:]
    assert "-> does NOT fit (the compiler ran out of memory; temporaries are its figure)" in out.stdout
    assert "--config.model.remat=save_matmul" in out.stdout and "none of the 1 candidates tried fits" in out.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["fits"] is False and data["per_device_bytes"] > data["hbm_bytes"]
    assert [c["overrides"] for c in data["candidates"]] == [["--config.model.remat=save_matmul"]]
    assert Path(data["hlo_paths"][0]).name == "train_step.v5e-8.lowered.hlo.txt"


def test_unknown_topology_is_a_one_line_error():
    out = llm("compile", "--config", "configs/tiny.py", "--topology", "v7x-8")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "llm compile: error: unknown TPU topology 'v7x-8'; use one of v5p-N (N in 8..8192), "
        "v5e-N (N in 1..256), v6e-N (N in 1..256)"
    )


def test_missing_libtpu_is_a_one_line_error(tmp_path):
    hidden = tmp_path / "hide" / "libtpu"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = dict(os.environ, PYTHONPATH=f"{hidden.parent}:{REPO}", TPU_LIBRARY_PATH="")
    env.pop("TPU_LIBRARY_PATH")
    out = llm("compile", "--config", "configs/tiny.py", "--topology", "v5e-8", env=env)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("llm compile: error: llm compile needs the libtpu wheel")
    assert len(out.stderr.strip().splitlines()) == 1
