"""`llm bench eval`: `llm eval` against lm-evaluation-harness's `hf` backend (PyTorch CPU) on the
same Hugging Face model directory and the same built-in task files, in one run.

  llm bench eval --config configs/small.py --vs-lm-eval

The model is --config's shape with transformers' own random init, saved as a Hugging Face
directory with a byte-level BPE tokenizer trained on the tasks' own text (so both sides read the
same files); the tasks are the built-in suite's (llm.eval.builtin), --limit items each. Each side
runs in its own process with the model loaded once; a task's time is from its first request to
its scores (lm-eval: its `evaluate()`), so loading the model, the task and its data is left out
on both sides. Ours is timed twice: the first pass
includes compiling each bucket shape, the second reuses them (a long eval, or in-training eval).
lm-eval runs at each --batch-sizes value in f32 (the identical-score check) and, where the CPU
has AMX / AVX-512 BF16, in bf16 too; its best is the peer figure. Benchmarks are not tests:
nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from llm.errors import UserError

TARGET_SPEEDUP = 3.0  # our items/s over lm-eval's best
DEFAULT_TASKS = ("builtin_next_line", "builtin_docstring_name", "builtin_perplexity", "builtin_docstring_body")
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
EXACT = ("acc", "acc_norm", "exact_match", "pass_at_1")  # must agree exactly; other metrics to 1e-5 relative


def _task_texts(yaml_paths: Sequence[Path]) -> list[str]:
    """Every string of the tasks' data files: the tokenizer is trained on what it will read."""
    from llm.eval.tasks import load_task

    texts = []
    for path in yaml_paths:
        for _, doc in load_task(path).docs(None):
            texts.extend(v for v in doc.values() if isinstance(v, str))
            texts.extend(x for v in doc.values() if isinstance(v, list) for x in v if isinstance(x, str))
    return texts


def _run_child(args: list[str], timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        proc = subprocess.run([sys.executable, "-m", "llm.bench.eval", *args, str(result)], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **OFFLINE})
        if proc.returncode != 0 or not result.is_file():
            lines = proc.stderr.strip().splitlines()
            raise UserError(f"bench child {args[0]} failed (exit {proc.returncode}): {lines[-1] if lines else 'no output'}\n" + "\n".join(lines[-15:]))
        return json.loads(result.read_text())


def _item_values(samples: list[dict]) -> list[float]:
    """Per-item log-likelihoods (first element of each response), for the score check."""
    values = []
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        for resp in s["resps"]:
            first = resp[0] if isinstance(resp, list) and resp else resp
            if isinstance(first, (list, tuple)) and first and isinstance(first[0], (int, float)):
                values.append(float(first[0]))
            elif isinstance(first, (int, float)):
                values.append(float(first))
    return values


def ours_child(hf_dir: Path, yaml_paths: list[Path], limit: int, batch_size: int) -> dict:
    from llm.eval.model import load_eval_model
    from llm.eval.runner import evaluate_task, load_tasks

    model = load_eval_model(hf_dir, batch_size=batch_size)
    out = {}
    for task in load_tasks(yaml_paths):
        passes = []
        for _ in range(2):
            start = time.perf_counter()
            result = evaluate_task(model, task, limit=limit)
            passes.append(time.perf_counter() - start)
        out[task.name] = {"items": result.n_effective, "first_s": passes[0], "warm_s": passes[1],
                          "metrics": result.scores.metrics, "values": _item_values(result.scores.samples)}
    return out


def lm_eval_child(hf_dir: Path, yaml_dir: Path, tasks: list[str], limit: int, batch_size: int, dtype: str) -> dict:
    """lm-eval's own evaluate() per task, timed from its first request to its scores (the task
    and its data are loaded before the clock starts, as ours are)."""
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    os.environ.update(OFFLINE)
    lm = HFLM(pretrained=str(hf_dir), dtype=dtype, device="cpu", batch_size=batch_size)
    manager = TaskManager(include_path=str(yaml_dir))
    out = {}
    for name in tasks:
        loaded = manager.load([name])
        for task in loaded["tasks"].values():  # as simple_evaluate prepares them
            if task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=1234)
        start = time.perf_counter()
        r = evaluate(lm=lm, task_dict=loaded, limit=limit, log_samples=True, bootstrap_iters=100000, confirm_run_unsafe_code=True)
        seconds = time.perf_counter() - start
        samples = r["samples"][name]
        out[name] = {"items": len(samples), "seconds": seconds, "metrics": r["results"][name],
                     "values": _item_values(json.loads(json.dumps(samples, default=str)))}
    return out


def _agree(ours: dict, theirs: dict) -> dict:
    """Whether the f32 scores are the same: exact for counts, 1e-5 relative otherwise; and the
    largest per-item log-likelihood difference."""
    same, worst = True, 0.0
    for key, value in theirs["metrics"].items():
        if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
            continue
        mine = ours["metrics"].get(key)
        if mine is None:
            same = False
        elif key.split(",")[0] in EXACT:
            same &= mine == value
        else:
            same &= abs(mine - value) <= 1e-5 * max(1.0, abs(value))
    if ours["values"] and len(ours["values"]) == len(theirs["values"]):
        worst = max(abs(a - b) for a, b in zip(ours["values"], theirs["values"]))
    return {"identical_scores": bool(same), "max_item_logprob_diff": worst}


def table(rows: list[dict]) -> str:
    head = "| task | items | llm first pass items/s | llm warm items/s | lm-eval best items/s (mode) | speedup first / warm | same scores | max item |Δ logp| |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        peer = f"{r['peer_items_per_s']:.2f} ({r['peer_mode']})" if r.get("peer_items_per_s") else "-"
        speed = f"{r['speedup_first']:.2f}x / {r['speedup_warm']:.2f}x" if r.get("peer_items_per_s") else "-"
        same = "-" if r.get("identical_scores") is None else ("yes" if r["identical_scores"] else "NO")
        diff = "-" if r.get("max_item_logprob_diff") is None else f"{r['max_item_logprob_diff']:.1e}"
        lines.append(f"| {r['task']} | {r['items']} | {r['first_items_per_s']:.2f} | {r['warm_items_per_s']:.2f} | {peer} | {speed} | {same} | {diff} |")
    return "\n".join(lines)


def run_eval_bench(config, *, vs_lm_eval: bool, out: str | Path, limit: int, tasks: Sequence[str], batch_sizes: Sequence[int],
                   batch_size: int) -> dict:
    from llm.bench.dpo import build_hf_model, cpu_bf16, cpu_name, train_tokenizer
    from llm.eval.builtin import materialize_builtin

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    yaml_paths = {p.stem: p for p in materialize_builtin(out / "tasks")}
    unknown = [t for t in tasks if t not in yaml_paths]
    if unknown:
        raise UserError(f"--tasks {unknown[0]!r} is not a built-in task; choose from {', '.join(sorted(yaml_paths))}")
    chosen = [yaml_paths[t] for t in tasks]
    hf_dir = out / "hf"
    with config.unlocked():  # a byte-level BPE needs its 256 byte tokens + the specials
        config.model.vocab_size = max(int(config.model.vocab_size), 512)
    train_tokenizer(_task_texts(chosen), int(config.model.vocab_size), hf_dir)
    build_hf_model(config, hf_dir)
    spec = [str(hf_dir), str(limit), ",".join(map(str, chosen))]
    ours = _run_child(["ours", *spec, str(batch_size)], timeout=7200)
    rows, peers = [], {}
    if vs_lm_eval:
        dtypes = ["float32", "bfloat16"] if cpu_bf16() else ["float32"]
        for dtype in dtypes:
            for b in batch_sizes:
                peers[(dtype, b)] = _run_child(["lm_eval", str(hf_dir), str(out / "tasks"), ",".join(tasks), str(limit), str(b), dtype], timeout=7200)
    for name in tasks:
        mine = ours[name]
        row = {"task": name, "items": mine["items"], "first_items_per_s": mine["items"] / mine["first_s"],
               "warm_items_per_s": mine["items"] / mine["warm_s"]}
        if peers:
            (dtype, b), best = max(((k, v[name]) for k, v in peers.items()), key=lambda kv: kv[1]["items"] / kv[1]["seconds"])
            row.update(peer_items_per_s=best["items"] / best["seconds"], peer_mode=f"{dtype}, batch {b}",
                       all_peer_items_per_s={f"{d}/b{bb}": v[name]["items"] / v[name]["seconds"] for (d, bb), v in peers.items()})
            row["speedup_first"] = row["first_items_per_s"] / row["peer_items_per_s"]
            row["speedup_warm"] = row["warm_items_per_s"] / row["peer_items_per_s"]
            f32 = max((v[name] for (d, _), v in peers.items() if d == "float32"), key=lambda v: v["items"] / v["seconds"])
            row.update(_agree(mine, f32))
        rows.append(row)
    text = table(rows)
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "bf16_flags": cpu_bf16()}
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, bf16 flags: {', '.join(machine['bf16_flags']) or 'none'}")
    print(text)
    result = {"machine": machine, "model": {"d_model": config.model.d_model, "n_layers": config.model.n_layers,
              "vocab_size": config.model.vocab_size}, "limit": limit, "batch_size": batch_size, "rows": rows, "table": text}
    if peers:
        total_ours = sum(ours[t]["first_s"] for t in tasks)
        total_peer = sum(min(v[t]["seconds"] for v in peers.values()) for t in tasks)
        items = sum(ours[t]["items"] for t in tasks)
        result["speedup_first"] = total_peer / total_ours
        result["speedup_warm"] = total_peer / sum(ours[t]["warm_s"] for t in tasks)
        print(f"all tasks ({items} items): {result['speedup_first']:.2f}x lm-eval's best on the first pass, "
              f"{result['speedup_warm']:.2f}x warm (target {TARGET_SPEEDUP:.0f}x)")
    (out / "bench.md").write_text(text + "\n")
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: Sequence[str]) -> int:
    """`python -m llm.bench.eval ours|lm_eval ... RESULT.json`: one side, in its own process."""
    side, *rest, result = argv
    if side == "ours":
        hf_dir, limit, paths, batch = rest
        out = ours_child(Path(hf_dir), [Path(p) for p in paths.split(",")], int(limit), int(batch))
    else:
        hf_dir, yaml_dir, tasks, limit, batch, dtype = rest
        out = lm_eval_child(Path(hf_dir), Path(yaml_dir), tasks.split(","), int(limit), int(batch), dtype)
    Path(result).write_text(json.dumps(out))
    return 0


def run(args: argparse.Namespace) -> dict:
    """The bench target (llm.bench.TARGETS["eval"])."""
    from llm.config.loading import load_config

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    if not sizes or min(sizes) < 1:
        raise UserError(f"--batch-sizes {args.batch_sizes!r}: give positive integers, e.g. 1,8,32")
    return run_eval_bench(load_config(args.config, args.config_overrides), vs_lm_eval=args.vs_lm_eval, out=args.out,
                          limit=args.limit, tasks=tasks, batch_sizes=sizes, batch_size=args.batch_size)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
