"""`llm compile` of the preference presets (libtpu, no TPU): LoRA DPO with the adapters-off
reference, full DPO with precomputed reference log-probs (its batch carries the "ref_logps"
array) and the reward model (with a per-pair margin: the "margin" array) compile their real
fine-tuning step. Kept small (one layer, 128-position rows, one v5e chip): ~15 s each.
The report's model FLOPs of a LoRA DPO step count the reference's forward pass."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from llm.compile.aot import abstract_setup
from llm.compile.report import finetune_split
from llm.config.loading import load_config
from llm.finetune.tasks import partition_for_config
from llm.model.spec import non_embedding_params

REPO = Path(__file__).resolve().parents[1]

SMALL = ("--config.model.n_layers=1", "--config.model.max_seq_len=128", "--config.data.seq_len=128",
         "--config.data.batch_size=4")
ROWS, POSITIONS = 4, 128
INT_BATCH_BYTES = 5 * ROWS * POSITIONS * 4  # inputs, targets, positions, segment_ids, loss_mask


def require_libtpu():
    if importlib.util.find_spec("libtpu") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install the tpu extra (libtpu) for the llm compile tests")
        pytest.skip("libtpu is not installed: pip install -e '.[tpu]'")


def compile_json(tmp_path, config: str, *overrides: str) -> tuple[dict, str]:
    out = subprocess.run(
        [sys.executable, "-m", "llm.cli.main", "compile", "--config", config, "--topology", "v5e-1",
         "--workdir", str(tmp_path / "w"), "--json", str(tmp_path / "r.json"), "--max-candidates", "0",
         *SMALL, *overrides],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return json.loads((tmp_path / "r.json").read_text()), out.stdout


@pytest.mark.parametrize(
    "config, overrides, method, extra_arrays",
    [
        ("configs/dpo_lora_tiny.py", ("--config.dpo.reference=adapters_off",), "lora r8", 0),
        ("configs/dpo_full_tiny.py", ("--config.dpo.reference=precompute",), "full", 1),  # ref_logps
        ("configs/rm_tiny.py", ("--config.rm.margin_field=margin",), "full", 1),  # margin
    ],
    ids=["dpo-adapters_off", "dpo-precompute", "reward-margin"],
)
def test_preference_configs_compile(tmp_path, config, overrides, method, extra_arrays):
    require_libtpu()
    data, stdout = compile_json(tmp_path, config, *overrides)
    task = "reward" if "rm_" in config else "dpo"
    assert data["fits"] is True and f"fine-tuning ({task}, {method})" in stdout
    assert data["finetune"]["task"] == task and data["finetune"]["method"] == method
    # The batch the step was compiled for: the standard int32 keys plus the task's f32 arrays.
    assert data["memory"]["batch_bytes"] == INT_BATCH_BYTES + extra_arrays * ROWS * POSITIONS * 4
    assert data["memory"]["temp_bytes"] > 0 and "ENTRY" in open(data["hlo_paths"][0]).read()
    if method.startswith("lora"):
        assert data["memory"]["frozen_bytes"] > 0 and data["finetune"]["frozen_params"] == data["n_params"]


def test_lora_dpo_flops_count_the_reference_forward():
    """adapters_off runs the model twice (the reference forward has no backward); simpo, with no
    reference, runs it once: the difference is one forward pass, adapters included."""
    common = ["model.max_seq_len=512", "model.scan_layers=False"]
    splits = {}
    for loss, reference in (("sigmoid", "adapters_off"), ("simpo", "none")):
        config = load_config("configs/dpo_lora_tiny.py", [*common, f"dpo.loss={loss}", f"dpo.reference={reference}"])
        setup = abstract_setup(config, jax.devices()[:1], partition_for_config(config))
        splits[loss] = finetune_split(config, setup)
    spec, t = setup.spec, config.data.seq_len
    forward = (2 * non_embedding_params(spec) + 2 * splits["sigmoid"].trainable_params
               + 4 * spec.n_layers * spec.d_model * t + 2 * spec.d_model * spec.vocab_size)
    assert splits["sigmoid"].flops_per_token - splits["simpo"].flops_per_token == pytest.approx(forward, rel=1e-12)
