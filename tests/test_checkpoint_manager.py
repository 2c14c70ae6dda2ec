"""Checkpoints: restore onto other meshes, damaged checkpoints, model mismatches, export,
start-up precedence and the NaN guard."""

import json
import logging
from pathlib import Path

import jax
import numpy as np
import pytest

from helpers import random_batch, tiny_config
from llm.checkpoint.export import export_workdir
from llm.checkpoint.manager import CheckpointMismatch, Checkpointer
from llm.checkpoint.params_io import load_params
from llm.errors import UserError
from llm.pytree import abstract_like
from llm.train.loop import NonFiniteError, run_training
from llm.train.setup import build_setup

SHORT = ("data.seq_len=32", "train.eval_every=0", "train.log_every=1")


def mesh_config(data, fsdp, tensor, *extra):
    return tiny_config(f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}", *SHORT, *extra)


def test_restore_onto_another_mesh_and_device_count(tmp_path):
    batches = [random_batch(256, 8, 32, seed=s) for s in range(2)]
    config = mesh_config(2, 2, 2)
    setup, state = build_setup(config, devices=jax.devices())
    state, _ = setup.train_step(state, setup.shard_batch(batches[0]), {})
    saved = jax.device_get(state.params)
    ckpt = Checkpointer(tmp_path, config)
    ckpt.save(1, state, {"position": 1}, {"config": json.loads(config.to_json_best_effort())})
    ckpt.close()
    _, reference = setup.train_step(state, setup.shard_batch(batches[1]), {})
    for shape, n in (((4, 1, 1), 4), ((1, 1, 1), 1)):
        other = mesh_config(*shape)
        setup2, fresh = build_setup(other, devices=jax.devices()[:n])
        restored, data_state, _, step = Checkpointer(tmp_path, other).restore(abstract_like(fresh))
        assert step == 1 and data_state == {"position": 1}
        for a, b in zip(jax.tree_util.tree_leaves(saved), jax.tree_util.tree_leaves(jax.device_get(restored.params))):
            np.testing.assert_array_equal(a, b)
        leaf = restored.params["blocks"][0]["mlp"]["up"]["kernel"]
        assert leaf.sharding.mesh.shape == setup2.mesh.shape
        _, metrics = setup2.train_step(restored, setup2.shard_batch(batches[1]), {})
        # Same params and batch; only the reduction order across devices differs.
        np.testing.assert_allclose(float(metrics["loss"]), float(reference["loss"]), rtol=1e-6)


def train(tmp_path, *extra, name="run"):
    config = tiny_config(*SHORT, "checkpoint.every_steps=2", "checkpoint.async_save=false", *extra)
    return config, run_training(config, tmp_path / name)


def truncate_largest_file(step_dir: Path) -> None:
    files = sorted((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim = files[-1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_truncated_latest_falls_back_and_invalid_step_is_an_error(tmp_path):
    config, _ = train(tmp_path, "train.steps=4")
    collect = Collect()
    logging.getLogger("llm").addHandler(collect)
    ckdir = tmp_path / "run" / "checkpoints"
    assert sorted(int(p.name) for p in ckdir.iterdir() if p.name.isdigit()) == [2, 4]
    truncate_largest_file(ckdir / "4")
    setup, state = build_setup(config)
    with pytest.raises(UserError, match=r"no checkpoint for step 3 in .*checkpoints \(available: \[2, 4\]\)"):
        Checkpointer(tmp_path / "run", config).restore(abstract_like(state), step=3)
    with pytest.raises(UserError, match=r"checkpoints/4 is damaged \(a file is truncated\); pick another step"):
        Checkpointer(tmp_path / "run", config).restore(abstract_like(state), step=4)
    # Read-only (export, generate): fall back, touch nothing.
    assert Checkpointer(tmp_path / "run", config, read_only=True).restore(abstract_like(state))[3] == 2
    assert (ckdir / "4").is_dir()
    # The training run's checkpointer moves the damaged step aside, so it can be saved again.
    ckpt = Checkpointer(tmp_path / "run", config)
    assert ckpt.restore(abstract_like(state))[3] == 2
    text = "\n".join(collect.lines)
    assert "checkpoints/4 is damaged (a file is truncated); falling back" in text
    assert ckpt.steps() == [2] and [p.name[:10] for p in ckdir.glob("damaged-*")] == ["damaged-4-"]


def test_restarting_from_an_earlier_step_saves_the_steps_it_redoes(tmp_path):
    """restore_step=2 with 4 on disk: the re-done step 4 is saved (the old one is moved aside,
    never deleted), so the latest checkpoint is this run's, not a stale one from before."""
    train(tmp_path, "train.steps=4")
    ckdir = tmp_path / "run" / "checkpoints"
    old_meta = (ckdir / "4" / "meta" / "metadata").read_bytes()
    config, summary = train(tmp_path, "train.steps=4", "checkpoint.restore_step=2")
    assert summary["start_step"] == 2 and summary["saved_steps"] == [4]
    assert sorted(int(p.name) for p in ckdir.iterdir() if p.name.isdigit()) == [2, 4]
    assert [p.name[:13] for p in ckdir.glob("superseded-*")] == ["superseded-4-"]
    assert (ckdir / "4" / "meta" / "metadata").read_bytes() != old_meta  # this run's config (restore_step=2) is in it


def test_checkpoint_of_another_model_shape_is_refused(tmp_path):
    train(tmp_path, "train.steps=2")
    other = tiny_config(*SHORT, "model.d_model=64")
    _, state = build_setup(other)
    with pytest.raises(CheckpointMismatch, match="model.d_model: checkpoint 128 vs config 64"):
        Checkpointer(tmp_path / "run", other).restore(abstract_like(state))


def test_export_and_init_from_precedence(tmp_path):
    config, _ = train(tmp_path, "train.steps=2")
    out = export_workdir(tmp_path / "run", tmp_path / "export", dtype="bfloat16")
    _, params = load_params(out)
    assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {np.dtype("bfloat16")}
    # A new run initialised from the export: weights only, fresh optimizer and step.
    summary = run_training(tiny_config(*SHORT, "train.steps=1", f"checkpoint.init_from={out}"), tmp_path / "sft")
    assert summary["start"].startswith(f"init_from {out}")
    # A workdir as the source; and resuming beats init_from when the workdir has a checkpoint.
    summary = run_training(tiny_config(*SHORT, "train.steps=1", f"checkpoint.init_from={tmp_path / 'run'}"), tmp_path / "sft2")
    assert "init_from" in summary["start"] and "checkpoints/2" in summary["start"]
    summary = run_training(tiny_config(*SHORT, "train.steps=2", f"checkpoint.init_from={tmp_path / 'run'}"), tmp_path / "sft2")
    assert summary["start"].startswith("resumed from") and summary["start_step"] == 1


def test_nan_guard_stops_and_names_the_step(tmp_path):
    with pytest.raises(NonFiniteError, match=r"non-finite (loss|grad_norm)=(nan|inf).* at step \d+; stopped without saving it"):
        train(tmp_path, "train.steps=8", "optim.lr=1e30", "optim.clip_norm=0.0", "optim.warmup_steps=0")
    summary = train(tmp_path, "train.steps=4", "optim.lr=1e30", "optim.clip_norm=0.0", "optim.warmup_steps=0",
                    "train.nan_policy=skip", name="skip")[1]
    assert summary["skipped_steps"] >= 1


def test_workdir_exports_to_hugging_face_with_matching_logits(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from flax import nnx

    from llm.checkpoint.export import restore_params
    from llm.interop.convert import to_hf
    from llm.model.build import abstract_model
    from llm.model.spec import model_spec
    from llm.parallel.rules import AxisRules

    config, _ = train(tmp_path, "train.steps=2")
    out = to_hf(None, tmp_path / "hf", workdir=tmp_path / "run")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
    saved_config, params, _ = restore_params(tmp_path / "run")
    spec = model_spec(saved_config, platform="cpu")
    graphdef, _ = abstract_model(spec, AxisRules.from_config(saved_config.mesh.rules))
    tokens = np.random.default_rng(0).integers(0, 256, (2, 24), dtype=np.int32)
    ours = np.asarray(nnx.merge(graphdef, params)(tokens))[..., :256]
    theirs = hf(torch.from_numpy(tokens.astype(np.int64))).logits.detach().numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
