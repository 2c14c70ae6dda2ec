"""The Grain pipeline: batch contract, exact resume in a new process, per-process shards,
worker-count independence, validation split, packing parity through the model, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llm.config.loading import load_config
from llm.data.batch import BATCH_KEYS
from llm.data.pipeline import make_batches
from llm.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def tiny(**data):
    config = load_config(ROOT / "configs/tiny.py")
    with config.unlocked():
        for k, v in data.items():
            config.data[k] = v
    return config


def write_docs(directory: Path, texts: list[str]) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(texts):
        (directory / f"doc{i:04d}.txt").write_text(text)
    return str(directory / "*.txt")


def random_docs(n: int, lo: int, hi: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz "))
    return [f"<{i}>" + "".join(rng.choice(letters, rng.integers(lo, hi))) for i in range(n)]


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k in BATCH_KEYS:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def segments(row: dict, i: int) -> list[bytes]:
    """The documents (as bytes) packed into row i: inputs plus the last target of each segment."""
    out = []
    seg = row["segment_ids"][i]
    for s in np.unique(seg[seg > 0]):
        idx = np.flatnonzero(seg == s)
        tokens = list(row["inputs"][i][idx]) + [row["targets"][i][idx[-1]]]
        out.append(bytes(int(t) for t in tokens))
    return out


def test_batch_contract_on_builtin_text():
    config = tiny()
    it = make_batches(config)
    b = next(it)
    rows, seq = config.data.batch_size, config.data.seq_len
    assert set(b) == set(BATCH_KEYS)
    for k in ("inputs", "targets", "segment_ids", "positions"):
        assert b[k].dtype == np.int32 and b[k].shape == (rows, seq)
    assert b["loss_mask"].dtype == np.float32 and b["loss_mask"].shape == (rows, seq)
    np.testing.assert_array_equal(b["loss_mask"], (b["segment_ids"] > 0).astype(np.float32))
    assert b["inputs"].max() < 256 and b["inputs"].min() >= 0


def test_packing_invariants(tmp_path):
    texts = random_docs(60, 5, 55)
    config = tiny(path=write_docs(tmp_path / "d", texts), eval_fraction=0.0, seq_len=64, batch_size=4)
    corpus = {t.encode() for t in texts}
    seen = set()
    for b in take(make_batches(config), 10):
        seg, pos = b["segment_ids"], b["positions"]
        for i in range(seg.shape[0]):
            real = seg[i] > 0
            # Padding only at the end; segments numbered 1, 2, 3 ... in order.
            assert not np.any(real[np.argmin(real):]) or real.all()
            ids = seg[i][real]
            assert ids[0] == 1 and np.all(np.diff(ids) >= 0) and np.all(np.diff(ids) <= 1)
            for s in np.unique(ids):
                idx = np.flatnonzero(seg[i] == s)
                np.testing.assert_array_equal(pos[i][idx], np.arange(len(idx)))
                # targets = next token within the same document
                np.testing.assert_array_equal(b["inputs"][i][idx[1:]], b["targets"][i][idx[:-1]])
            for doc in segments(b, i):
                assert doc in corpus
                seen.add(doc)
    assert len(seen) >= 20


def test_long_documents_split_into_consecutive_pieces(tmp_path):
    text = "".join(chr(97 + i % 26) for i in range(1000))
    config = tiny(path=write_docs(tmp_path / "d", [text]), eval_fraction=0.0, seq_len=64, batch_size=2)
    pieces = [p for b in take(make_batches(config), 8) for i in range(2) for p in segments(b, i)]
    # Every token is a target exactly once: pieces overlap by one token and tile the document.
    n_pieces = -(-(len(text) - 1) // 64)
    first_epoch = pieces[:n_pieces]
    rebuilt = first_epoch[0] + b"".join(p[1:] for p in first_epoch[1:])
    assert rebuilt == text.encode()


RESUME_SCRIPT = r"""
import json, sys, numpy as np
from llm.config.loading import load_config
from llm.data.pipeline import make_batches
config = load_config(sys.argv[1], sys.argv[2:])
state = json.load(open(sys.argv[1] + ".state.json"))
it = make_batches(config)
it.set_state(state)
batches = [next(it) for _ in range(4)]
np.savez(sys.argv[1] + ".npz", **{f"{i}_{k}": v for i, b in enumerate(batches) for k, v in b.items()})
"""


def test_exact_resume_in_a_new_process(tmp_path):
    texts = random_docs(80, 20, 300, seed=1)
    path = write_docs(tmp_path / "d", texts)
    overrides = [f"data.path={path}", "data.seq_len=64", "data.batch_size=4", "data.seed=3"]
    config = load_config(ROOT / "configs/tiny.py", overrides)
    it = make_batches(config)
    take(it, 5)
    state = it.get_state()
    expected = take(it, 4)
    cfg_file = tmp_path / "tiny.py"
    cfg_file.write_text((ROOT / "configs/tiny.py").read_text())
    Path(str(cfg_file) + ".state.json").write_text(json.dumps(state))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", RESUME_SCRIPT, str(cfg_file), *overrides], check=True, env=env, cwd=ROOT)
    got = np.load(str(cfg_file) + ".npz")
    for i, b in enumerate(expected):
        for k in BATCH_KEYS:
            np.testing.assert_array_equal(got[f"{i}_{k}"], b[k], err_msg=f"batch {i} {k}")


def test_batch_k_depends_only_on_seed_and_k(tmp_path):
    path = write_docs(tmp_path / "d", random_docs(50, 20, 200))
    a = take(make_batches(tiny(path=path, seed=5)), 6)
    b = take(make_batches(tiny(path=path, seed=5)), 6)
    c = take(make_batches(tiny(path=path, seed=6)), 6)
    assert_batches_equal(a, b)
    assert not all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, c))


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(tmp_path):
    path = write_docs(tmp_path / "d", random_docs(50, 20, 200))
    serial = take(make_batches(tiny(path=path)), 6)
    it = make_batches(tiny(path=path, num_workers=2))
    parallel = take(it, 3)
    state = it.get_state()
    json.dumps(state)
    parallel += take(it, 3)
    assert_batches_equal(serial, parallel)
    resumed = make_batches(tiny(path=path, num_workers=2))
    resumed.set_state(state)
    assert_batches_equal(parallel[3:], take(resumed, 3))


def test_reader_threads_give_the_same_batches(tmp_path):
    import json as _json

    path = tmp_path / "d.jsonl"
    path.write_text("".join(_json.dumps({"text": t}) + "\n" for t in random_docs(60, 20, 200)))
    serial = take(make_batches(tiny(source="jsonl", path=str(path))), 5)
    threaded = take(make_batches(tiny(source="jsonl", path=str(path), read_threads=4)), 5)
    assert_batches_equal(serial, threaded)


def test_process_shards_are_disjoint_and_cover_the_data(tmp_path):
    n, seq = 40, 32
    # Each document is exactly seq+1 bytes, so it fills one row: row r of process p is global
    # document p + 2r, and the first n/2 rows of each process are one epoch.
    texts = [f"{i:04d}" + "x" * (seq + 1 - 4) for i in range(n)]
    path = write_docs(tmp_path / "d", texts)
    config = tiny(path=path, eval_fraction=0.0, seq_len=seq, batch_size=8)
    shards = []
    for p in range(2):
        it = make_batches(config, process_index=p, process_count=2)
        rows = [seg for b in take(it, n // 2 // 4) for i in range(4) for seg in segments(b, i)]
        assert b_shape_ok(it, config)
        shards.append({r[:4] for r in rows})
        assert len(rows) == n // 2 and len(shards[-1]) == n // 2
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] == {f"{i:04d}".encode() for i in range(n)}


def b_shape_ok(it, config) -> bool:
    b = next(it)
    return b["inputs"].shape == (config.data.batch_size // 2, config.data.seq_len)


def test_validation_split_is_disjoint_from_train(tmp_path):
    texts = random_docs(200, 10, 50)
    path = write_docs(tmp_path / "d", texts)
    config = tiny(path=path, eval_fraction=0.2, seq_len=64, batch_size=8)
    train = {d for b in take(make_batches(config, "train"), 30) for i in range(8) for d in segments(b, i)}
    val = {d for b in take(make_batches(config, "validation"), 10) for i in range(8) for d in segments(b, i)}
    assert val and train and not train & val
    assert 15 <= len(val) <= 70  # about 20% of 200 documents
    # An explicit eval_path replaces the held-out fraction.
    eval_path = write_docs(tmp_path / "e", ["held out document number one", "held out document two"])
    config = tiny(path=path, eval_path=eval_path, seq_len=64, batch_size=2)
    val = {d for b in take(make_batches(config, "validation"), 2) for i in range(2) for d in segments(b, i)}
    assert val == {b"held out document number one", b"held out document two"}


def test_synthetic_source_is_seeded_and_in_vocab():
    config = load_config(ROOT / "configs/small.py")
    a = next(make_batches(config))
    b = next(make_batches(config))
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert a["inputs"].shape == (config.data.batch_size, config.data.seq_len)
    assert a["inputs"].max() < config.model.vocab_size
    np.testing.assert_array_equal(a["inputs"][:, 1:], a["targets"][:, :-1])


def test_concat_packing_fills_rows(tmp_path):
    path = write_docs(tmp_path / "d", random_docs(40, 10, 90))
    b = take(make_batches(tiny(path=path, packing="concat", seq_len=64, batch_size=4, eval_fraction=0.0)), 3)[-1]
    assert (b["segment_ids"] > 0).all()
    for i in range(4):
        seg = b["segment_ids"][i]
        for s in np.unique(seg):
            idx = np.flatnonzero(seg == s)
            np.testing.assert_array_equal(b["inputs"][i][idx[1:]], b["targets"][i][idx[:-1]])


def test_bad_input_policy(tmp_path):
    d = tmp_path / "d"
    write_docs(d, random_docs(10, 20, 60))
    (d / "empty.txt").write_text("   \n")
    (d / "latin1.txt").write_bytes("caf\xe9 ok\nna\xefve".encode("latin-1"))
    config = tiny(path=str(d / "*.txt"), eval_fraction=0.0, seq_len=64, batch_size=2)
    it = make_batches(config)
    take(it, 20)
    report = it.report()
    assert report["skipped"]["empty document"] >= 1
    assert report["skipped"]["non-UTF-8 bytes"] >= 1
    assert report["first"]["non-UTF-8 bytes"].endswith("latin1.txt:1")
    (d / "empty.txt").unlink()
    with pytest.raises(UserError, match="latin1.txt:1: non-UTF-8"):
        take(make_batches(tiny(path=str(d / "*.txt"), eval_fraction=0.0, bad_input="fail", seq_len=64, batch_size=2)), 20)
    with pytest.raises(UserError, match="matches no files"):
        make_batches(tiny(path=str(tmp_path / "nothing*.txt")))
    with pytest.raises(UserError, match="validation split .* is empty"):
        make_batches(tiny(path=str(d / "doc0000.txt"), eval_fraction=0.05), "validation")


def test_a_source_with_no_usable_record_is_an_error(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    for i in range(3):
        (d / f"{i}.txt").write_text(" \n")
    with pytest.raises(UserError, match="yielded no usable records .*3 empty document"):
        next(make_batches(tiny(path=str(d / "*.txt"), eval_fraction=0.0)))


def test_long_document_policies(tmp_path):
    path = write_docs(tmp_path / "d", ["short doc " * 3, "y" * 500])
    with pytest.raises(UserError, match="longer than data.seq_len"):
        take(make_batches(tiny(path=path, eval_fraction=0.0, seq_len=64, batch_size=2, long_documents="fail")), 4)
    it = make_batches(tiny(path=path, eval_fraction=0.0, seq_len=64, batch_size=2, long_documents="skip"))
    for b in take(it, 3):
        assert b"y" * 10 not in b"".join(s for i in range(2) for s in segments(b, i))
    it = make_batches(tiny(path=path, eval_fraction=0.0, seq_len=64, batch_size=2, long_documents="truncate"))
    docs = [s for b in take(it, 4) for i in range(2) for s in segments(b, i)]
    assert b"y" * 65 in docs and all(len(s) <= 65 for s in docs)


def test_state_refuses_other_settings(tmp_path):
    path = write_docs(tmp_path / "d", random_docs(20, 20, 60))
    it = make_batches(tiny(path=path))
    next(it)
    state = json.loads(json.dumps(it.get_state()))
    with pytest.raises(UserError, match="seq_len"):
        make_batches(tiny(path=path, seq_len=64)).set_state(state)


def test_packed_rows_match_each_document_alone_through_the_model(tmp_path):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from llm.model.build import init_params
    from llm.model.spec import model_spec
    from llm.parallel.mesh import build_mesh
    from llm.parallel.rules import AxisRules

    path = write_docs(tmp_path / "d", random_docs(30, 10, 50))
    config = tiny(path=path, eval_fraction=0.0, seq_len=128, batch_size=2)
    with config.unlocked():
        config.precision.compute = "float32"
    batch = next(make_batches(config))
    assert batch["segment_ids"].max() >= 3  # several documents per row
    mesh = build_mesh(config.mesh, jax.devices()[:1])
    rules = AxisRules.from_config(config.mesh.rules, mesh)
    graphdef, params, _ = init_params(model_spec(config), rules, seed=0)
    forward = jax.jit(lambda p, t, pos, seg: nnx.merge(graphdef, p)(t, pos, seg))
    # Each document alone, left-aligned in its own row (trailing padding cannot affect a causal
    # model), stacked under the packed rows so one forward call (one compile) serves both.
    seg = batch["segment_ids"]
    spans = [(i, np.flatnonzero(seg[i] == s)) for i in range(2) for s in np.unique(seg[i][seg[i] > 0])]
    tokens = np.zeros((2 + len(spans), 128), np.int32)
    segments = np.zeros_like(tokens)
    positions = np.zeros_like(tokens)
    tokens[:2], segments[:2], positions[:2] = batch["inputs"], seg, batch["positions"]
    for j, (i, idx) in enumerate(spans):
        tokens[2 + j, : len(idx)] = batch["inputs"][i][idx]
        segments[2 + j, : len(idx)] = 1
        positions[2 + j] = np.arange(128)
    logits = np.asarray(forward(params, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments)))
    for j, (i, idx) in enumerate(spans):
        np.testing.assert_allclose(logits[i, idx, :256], logits[2 + j, : len(idx), :256], rtol=1e-5, atol=1e-5)
    assert len(spans) >= 4
