"""benchmarks/gpu.sh and its summary (`python -m llm.bench.gpu_table DIR`): the tables come from
real (tiny, CPU) bench figures, a failed or skipped step shows as such, and the script's smoke
mode runs end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import tiny_config
from llm.bench.attention import check_attention
from llm.bench.generate import run_generate_bench
from llm.bench.gpu_table import main, summary
from llm.bench.train import run_train_bench

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    """What gpu.sh leaves behind, from real tiny runs: attention, tiny trained with flags off
    (its `maxtext` run failed), a decode at batches 1 and 4, and a skipped step."""
    d = tmp_path_factory.mktemp("gpu_bench")
    figures = {
        "attention": check_attention("blocked", "xla", batch=2, seq=64, heads=4, kv_heads=2, head_dim=16, block=16),
        "train__tiny__off": run_train_bench(tiny_config("data.seq_len=32", "mesh.data=8"), steps=1, vs_hf=False),
        "generate__tiny": run_generate_bench(tiny_config("precision.compute=float32"), False, prompt_len=8, new_tokens=12,
                                             batches=(1, 4), repeats=1, bandwidth_mb=32),
    }
    for name, r in figures.items():
        (d / f"{name}.json").write_text(json.dumps(r))
    (d / "train__tiny__maxtext.error").write_text("exit 1 after 3s\nTraceback ...\nRESOURCE_EXHAUSTED: out of memory\n")
    (d / "train__tiny__off.log").write_text("UserWarning: model.attention_impl=auto: cuDNN attention is not available "
                                            "(no cuDNN); using xla\n")
    (d / "xla_flags.txt").write_text("--xla_gpu_enable_latency_hiding_scheduler=true\ndropped: none\n")
    (d / "steps.tsv").write_text("attention\t0\t3\ntrain__tiny__off\t0\t7\ngenerate__tiny\t0\t6\n"
                                 "train__tiny__maxtext\t1\t3\ntrain__small__off\tskipped\t0\n")
    return d


def test_summary_tables_hold_the_figures(bench_dir):
    text = summary(bench_dir)
    train = json.loads((bench_dir / "train__tiny__off.json").read_text())
    decode = json.loads((bench_dir / "generate__tiny.json").read_text())
    assert f"| tiny | off | 8 x 32 | float32 | {train['tokens_per_s']:,.0f} |" in text
    assert f"{100 * train['mfu']:.1f}%" in text
    assert "| tiny | maxtext | FAILED (exit 1): RESOURCE_EXHAUSTED: out of memory |" in text
    assert "| small | off | skipped (out of time budget) |" in text
    assert f"| tiny | 1 | {decode['tokens_per_s_b1']:,.1f} | {decode['roofline_tokens_per_s_b1']:,.0f} | " \
           f"{100 * decode['roofline_fraction_b1']:.1f}% |" in text
    assert f"| tiny | 4 | {decode['tokens_per_s_b4']:,.1f} |" in text
    assert "| blocked vs xla | bfloat16 | 2 x 64, 4/2 of 16 |" in text and "| ok |" in text
    assert "Steps: 3 ok, 1 failed (train__tiny__maxtext), 1 skipped (train__small__off)" in text
    assert "Attention fell back: train__tiny__off: UserWarning: model.attention_impl=auto: cuDNN" in text


def test_module_entry_prints_and_writes_summary(bench_dir):
    out = subprocess.run([sys.executable, "-m", "llm.bench.gpu_table", str(bench_dir)], capture_output=True, text=True,
                         cwd=REPO, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert "## Train step" in out.stdout and (bench_dir / "summary.md").read_text() in out.stdout
    assert main(["/no/such/dir"]) == 2


def test_a_failed_attention_check_shows_its_reason(tmp_path):
    r = check_attention(lambda q, k, v, mask: q * 0 + 1, "xla", batch=2, seq=32, heads=2, kv_heads=2, head_dim=8,
                        dtype="float32", timing=False)
    (tmp_path / "attention.json").write_text(json.dumps(r))
    (tmp_path / "steps.tsv").write_text("attention\t2\t1\n")
    text = summary(tmp_path)
    assert "| FAIL: out: <lambda> vs f32 relative error" in text


def _shellcheck() -> str | None:
    return shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))


@pytest.mark.slow  # the whole script in smoke mode: five CPU processes, ~30 s
def test_gpu_script_smoke_mode_runs_end_to_end(tmp_path):
    found = _shellcheck()
    if found:
        lint = subprocess.run([found, "-x", "benchmarks/gpu.sh"], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert lint.returncode == 0, lint.stdout
    env = {**os.environ, "LLM_GPU_SCRIPT_SMOKE": "1", "PYTHON": sys.executable}
    out = subprocess.run(["bash", "benchmarks/gpu.sh", str(tmp_path)], capture_output=True, text=True, cwd=REPO,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    steps = [line.split("\t") for line in (tmp_path / "steps.tsv").read_text().splitlines()]
    assert [(name, rc) for name, rc, _ in steps] == [
        ("machine", "0"), ("attention", "0"), ("train__tiny__off", "0"), ("generate__tiny", "0"), ("train__tiny__maxtext", "0")]
    flags = (tmp_path / "xla_flags.txt").read_text().splitlines()[0].split()
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in flags
    text = (tmp_path / "summary.md").read_text()
    assert "| tiny | maxtext | 8 x 128 | bfloat16 |" in text and "| tiny | 4 |" in text
    assert "| blocked vs xla | bfloat16 |" in text and "Steps: 5 ok, 0 failed" in text
    assert "total: 5 steps, 0 failed or skipped" in out.stdout
