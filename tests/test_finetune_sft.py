"""`llm sft` end to end on the built-in docstring -> body pairs: LoRA lowers the held-out
assistant-token loss of the start checkpoint, writes cost.json, merged weights and adapters and
resumes; QLoRA runs on an NF4 base; bad input is a one-line error."""

import json

import numpy as np
import pytest

from finetune_fixtures import FAST, corpus_and_start, llm_session


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    return corpus_and_start(tmp_path_factory)


def sft(config, workdir, manifest, pre, *extra):
    return ["sft", "--config", config, "--workdir", str(workdir), "--init-from", str(pre), "--data", str(manifest), *FAST, *extra]


@pytest.mark.slow
def test_lora_sft_lowers_held_out_loss_writes_outputs_and_resumes_and_qlora_runs(start, tmp_path):
    manifest, pre = start
    lora, qlora = tmp_path / "lora", tmp_path / "qlora"
    args = ("--config.train.steps=30", "--config.train.eval_every=15", "--config.train.eval_steps=4", "--config.train.log_every=10")
    results = llm_session(
        sft("configs/sft_lora_tiny.py", lora, manifest, pre, *args),
        sft("configs/sft_lora_tiny.py", lora, manifest, pre, *args),  # again: resumes at the end, rewrites the outputs
        sft("configs/sft_qlora_tiny.py", qlora, manifest, pre, "--config.train.steps=2", "--config.train.eval_every=2",
            "--config.train.eval_steps=1"),
        ["compare", str(lora), str(qlora)],
        ["export", "--workdir", str(lora), "--out", str(tmp_path / "export")],  # the merged weights, not the adapters
        ["generate", "--workdir", str(lora), "--prompt", "def f(x):", "--max-new-tokens", "4"],
    )
    for code, err in results:
        assert code == 0, err[-3000:]
    summary = json.loads((lora / "summary.json").read_text())
    assert summary["start"].startswith(f"resumed from {lora}") and "frozen weights from init_from" in summary["start"]
    assert json.loads((lora / "metrics.jsonl").read_text().splitlines()[0])["step"] == 0  # the start weights' eval
    first = [json.loads(line) for line in (lora / "metrics.jsonl").read_text().splitlines() if "eval_loss" in line]
    assert [r["step"] for r in first] == [0, 15, 30]
    assert first[-1]["eval_loss"] < first[0]["eval_loss"] - 0.05, first

    cost = json.loads((lora / "cost.json").read_text())
    assert {"trainable_params", "total_params", "step_flops", "peak_memory_bytes", "tokens_per_s", "eval_loss"} <= set(cost)
    assert cost["eval_loss"] == first[-1]["eval_loss"] and cost["start_eval_loss"] == first[0]["eval_loss"]  # kept by the no-op re-run
    assert cost["trainable_params"] == 2 * 8 * (2 * (128 + 128) + 2 * (128 + 64) + 2 * (128 + 384) + (384 + 128))
    assert cost["trainable_params"] / cost["total_params"] < 0.1 and cost["step_flops"] > 0 and cost["peak_memory_bytes"] > 0
    assert {p.name for p in (lora / "adapter").iterdir()} == {"adapter.json", "adapter.safetensors"}
    assert {p.name for p in (lora / "peft").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    assert (lora / "merged" / "params").is_dir() and (lora / "merged" / "tokenizer").is_dir()
    merged_config = json.loads((lora / "merged" / "config.json").read_text())
    assert merged_config["peft"]["lora_rank"] == 0 and merged_config["model"]["d_model"] == 128
    exported = json.loads((tmp_path / "export" / "config.json").read_text())
    assert exported["model"] == merged_config["model"] and (tmp_path / "export" / "params").is_dir()
    checkpoint_bytes = sum(f.stat().st_size for f in (lora / "checkpoints").rglob("*") if f.is_file())
    assert checkpoint_bytes < 2_000_000  # adapters and their optimizer state only

    qcost = json.loads((qlora / "cost.json").read_text())
    assert qcost["method"] == "qnf4-lora r8" and qcost["trainable_params"] == cost["trainable_params"]
    assert qcost["frozen_bytes"] / (qcost["total_params"] - qcost["trainable_params"]) <= 0.6
    assert np.isfinite(qcost["eval_loss"]) and (qlora / "merged" / "params").is_dir()


def test_bad_input_is_one_line(start, tmp_path):
    manifest, pre = start
    no_assistant = tmp_path / "rows.jsonl"
    no_assistant.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"}]}) + "\n" for i in range(200)))
    cases = [
        (("--data", str(no_assistant), "--init-from", str(pre)), "no assistant turn with content"),
        (("--init-from", str(tmp_path)), "is not a training workdir"),
        (("--init-from", str(pre)), "no training data: pass --data"),
        (("--init-from", str(pre), "--data", str(manifest), "--config.peft.lora_targets=nothing"), "matches no linear layer"),
        (("--init-from", str(pre), "--data", str(manifest), "--config.data.format=pretrain"), "instruction tuning reads data.format=sft"),
        (("--init-from", str(pre), "--data", str(manifest), "--config.model.d_model=64"), "the model comes from --init-from"),
    ]
    commands = [["sft", "--config", "configs/sft_lora_tiny.py", "--workdir", str(tmp_path / f"w{i}"), *FAST, *extra]
                for i, (extra, _) in enumerate(cases)]
    for (code, err), (extra, message) in zip(llm_session(*commands), cases):
        errors = [line for line in err.splitlines() if "error:" in line]
        assert code == 2 and len(errors) == 1 and message in errors[0], (extra, err[-2000:])
        assert "Traceback" not in err
