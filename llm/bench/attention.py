"""`llm bench attention`: one attention implementation checked against another on a packed
batch, outputs and gradients, both against an f32 reference, plus the row-independence check.

Why: a fused kernel (cuDNN) can be fast and wrong in ways a loss curve hides. Another JAX stack
shipped a cuDNN path that attended across packed documents (DESIGN.md). So this target builds
rows that each hold several documents of random lengths (segment ids 1..k, trailing padding
segment 0, which `attention_mask` treats as one more segment), and
- compares `attend(impl)` with `attend(vs)`: outputs and the gradients w.r.t. q, k, v of the
  loss sum(out * w) for a fixed random f32 cotangent w, and each against `vs` run in float32
  on the upcast inputs (matmuls at full f32 precision: a GPU's default f32 matmul is TF32);
- changes q, k, v of one document (the second of row 0), recomputes, and requires every other
  position of every row to be exactly unchanged, outputs and gradients;
- times both implementations' jitted forward + backward (information, not checked).
A check that fails makes the target raise (the CLI exits non-zero) after writing --json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from llm.errors import UserError
from llm.model.attention import attend, attention_mask

Attention = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]  # (q, k, v, mask) -> out

# Largest max|x - x_f32| / max|x_f32| of the output and of each gradient, either implementation
# against the f32 reference. bf16: inputs, output and gradients are rounded to 8 significant
# bits (relative step 2^-8 = 3.9e-3) and the softmax weights are bf16 in the value matmuls.
# Measured, blocked and xla on CPU (Intel Xeon, jax 0.10.2), 13 runs from 2 x 64 (4/2 heads of
# 16) to 1 x 2048 (8/2 of 64) and 2 x 512 (8/8 of 128): 2.5e-3 (out) to 7.7e-3 (blocked's dq at
# 2 x 128, 4/2 of 32), so 2e-2 is 2.6x over the worst and still far under the O(1) error of a
# wrong mask. f32: blocked at most 1.5e-6 (dk), xla exactly 0 (it is the reference); 1e-5 leaves
# room for another summation order.
TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2}
# Below f32, `impl`'s error against f32 may be at most this many times `vs`'s (the two round
# alike, so the same order), above a floor of TOLERANCE / SAME_ORDER so that an error well under
# the limit passes where `vs` happens to be near exact. In f32 `vs` is the reference itself.
SAME_ORDER = 4.0
TIMING_REPS = 5
QUANTITIES = ("out", "dq", "dk", "dv")


def packed_segment_ids(batch: int, seq: int, rng: np.random.Generator, max_docs: int = 6) -> np.ndarray:
    """(batch, seq) int32: each row 2..max_docs documents of random lengths (ids 1..k) and then
    0..seq/8 positions of padding (id 0)."""
    if seq < 16:
        raise UserError(f"llm bench attention needs --seq of at least 16 to pack documents, not {seq}")
    rows = np.zeros((batch, seq), np.int32)
    for row in rows:
        docs = int(rng.integers(2, max_docs + 1))
        content = seq - int(rng.integers(0, seq // 8 + 1))
        cuts = np.sort(rng.choice(np.arange(1, content), docs - 1, replace=False))
        for doc, (start, end) in enumerate(zip([0, *cuts], [*cuts, content]), start=1):
            row[start:end] = doc
    return rows


def implementation(name: str, block: int) -> Attention:
    """`attend` with one implementation (block: query positions per block of `blocked`)."""

    def attention(q, k, v, mask):
        return attend(q, k, v, mask, name, block=min(block, q.shape[1]))

    attention.__name__ = name
    return attention


def _as_attention(impl: str | Attention, block: int) -> Attention:
    return implementation(impl, block) if isinstance(impl, str) else impl


def _name(impl: str | Attention) -> str:
    return impl if isinstance(impl, str) else getattr(impl, "__name__", "custom")


def loss_and_grads(attention: Attention) -> Callable:
    """Jitted (q, k, v, mask, w) -> (out, (dq, dk, dv)) of the loss sum(out * w) in f32."""

    def loss(q, k, v, mask, w):
        out = attention(q, k, v, mask)
        return jnp.sum(out.astype(jnp.float32) * w), out

    grad = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)

    @jax.jit
    def run(q, k, v, mask, w):
        grads, out = grad(q, k, v, mask, w)
        return out, grads

    return run


def _host(figures) -> dict[str, np.ndarray]:
    out, (dq, dk, dv) = figures
    return {name: np.asarray(x, np.float64) for name, x in zip(QUANTITIES, (out, dq, dk, dv))}


def error(x: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """max |x - ref| and that over max |ref|."""
    diff = float(np.max(np.abs(x - ref)))
    scale = float(np.max(np.abs(ref)))
    return {"abs": diff, "rel": diff / scale if scale else diff}


def leak_check(run: Callable, inputs: tuple, segment_ids: np.ndarray, rng: np.random.Generator,
               before: dict[str, np.ndarray] | None = None, row: int = 0, doc: int = 2) -> dict:
    """Change q, k, v of document `doc` in `row` and rerun: the largest change anywhere outside
    that document (other documents and padding of the row, every other row), of the output and
    of each gradient, absolute and over the largest value. A run that is not bit-reproducible
    by itself (a kernel that accumulates with atomics) is measured too: `repeat_change`."""
    q, k, v, mask, w = inputs
    before = _host(run(*inputs)) if before is None else before
    repeat = _host(run(*inputs))
    inside = np.zeros(segment_ids.shape, bool)
    inside[row] = segment_ids[row] == doc

    def changed(x: jax.Array) -> jax.Array:
        fresh = jnp.asarray(rng.standard_normal(x.shape), x.dtype)
        return jnp.where(jnp.asarray(inside)[:, :, None, None], fresh, x)

    after = _host(run(changed(q), changed(k), changed(v), mask, w))
    outside = ~inside
    figures: dict = {"row": row, "doc": doc, "doc_positions": int(inside.sum())}
    for name in QUANTITIES:
        change = float(np.max(np.abs(after[name] - before[name])[outside]))
        scale = float(np.max(np.abs(before[name])))
        figures[name] = {"change": change, "rel": change / scale if scale else change,
                         "inside_change": float(np.max(np.abs(after[name] - before[name])[inside])),
                         "repeat_change": float(np.max(np.abs(repeat[name] - before[name])))}
    return figures


def leak_ok(leak: dict, tolerance: float) -> bool:
    """The output outside the changed document must be bit-identical; so must the gradients,
    unless the implementation is not bit-reproducible by itself (then their change must stay
    under the tolerance, far under what another document's values would cause)."""
    if leak["out"]["change"] != 0.0 or leak["out"]["inside_change"] == 0.0:
        return False
    for name in QUANTITIES[1:]:
        g = leak[name]
        if g["change"] != 0.0 and (g["repeat_change"] == 0.0 or g["rel"] > tolerance):
            return False
    return True


def time_ms(run: Callable, inputs: tuple, reps: int = TIMING_REPS) -> dict[str, float]:
    """Best and median milliseconds of the compiled forward + backward (compiled before)."""
    jax.block_until_ready(run(*inputs))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(run(*inputs))
        times.append((time.perf_counter() - start) * 1e3)
    return {"best_ms": min(times), "median_ms": statistics.median(times)}


def check_attention(
    impl: str | Attention, vs: str | Attention, *, batch: int = 2, seq: int = 512, heads: int = 8, kv_heads: int = 2,
    head_dim: int = 64, dtype: str = "bfloat16", block: int = 64, seed: int = 0, timing: bool = True,
) -> dict:
    """The figures of `impl` against `vs` (names for `attend` or callables (q, k, v, mask) ->
    out), with "ok" and the reasons it is not in "failures"."""
    if heads % kv_heads:
        raise UserError(f"--heads {heads} must be a multiple of --kv-heads {kv_heads}")
    rng = np.random.default_rng(seed)
    segment_ids = packed_segment_ids(batch, seq, rng)
    cd = jnp.dtype(dtype)
    q = jnp.asarray(rng.standard_normal((batch, seq, heads, head_dim)), cd)
    k = jnp.asarray(rng.standard_normal((batch, seq, kv_heads, head_dim)), cd)
    v = jnp.asarray(rng.standard_normal((batch, seq, kv_heads, head_dim)), cd)
    w = jnp.asarray(rng.standard_normal((batch, seq, heads, head_dim)), jnp.float32)
    mask = attention_mask(jnp.asarray(segment_ids), seq)
    inputs = (q, k, v, mask, w)
    runs = {"impl": loss_and_grads(_as_attention(impl, block)), "vs": loss_and_grads(_as_attention(vs, block))}
    figures = {side: _host(run(*inputs)) for side, run in runs.items()}
    with jax.default_matmul_precision("float32"):  # cuDNN takes no f32: its reference is xla's
        up = tuple(x.astype(jnp.float32) for x in (q, k, v))
        reference = _host(loss_and_grads(_as_attention("xla" if vs == "cudnn" else vs, block))(*up, mask, w))
    tolerance = TOLERANCE[cd.name]
    result: dict = {
        "impl": _name(impl), "vs": _name(vs), "dtype": cd.name, "batch": batch, "seq": seq, "heads": heads,
        "kv_heads": kv_heads, "head_dim": head_dim, "block": block, "seed": seed,
        "documents_per_row": [int(row.max()) for row in segment_ids],
        "padding_per_row": [int((row == 0).sum()) for row in segment_ids],
        "backend": jax.default_backend(), "device": jax.devices()[0].device_kind, "jax": jax.__version__,
        "tolerance": tolerance, "same_order": SAME_ORDER, "errors": {},
    }
    failures = []
    for name in QUANTITIES:
        e = {"impl_vs": error(figures["impl"][name], figures["vs"][name]),
             "impl_f32": error(figures["impl"][name], reference[name]),
             "vs_f32": error(figures["vs"][name], reference[name])}
        result["errors"][name] = e
        for side in ("impl_f32", "vs_f32"):
            if not e[side]["rel"] <= tolerance:  # `not <=`: NaN fails
                failures.append(f"{name}: {result[side[:-4]]} vs f32 relative error {e[side]['rel']:.2e} > {tolerance:.0e}")
        same_order = max(SAME_ORDER * e["vs_f32"]["rel"], tolerance / SAME_ORDER)
        if cd != jnp.float32 and not e["impl_f32"]["rel"] <= same_order:
            failures.append(f"{name}: {result['impl']}'s f32 error {e['impl_f32']['rel']:.2e} is over {SAME_ORDER:g}x "
                            f"{result['vs']}'s ({e['vs_f32']['rel']:.2e})")
    result["leak"] = {}
    for side, run in runs.items():
        leak = leak_check(run, inputs, segment_ids, np.random.default_rng(seed + 1), before=figures[side])
        result["leak"][result[side]] = leak
        if not leak_ok(leak, tolerance):
            worst = max(QUANTITIES, key=lambda n: leak[n]["change"])
            failures.append(f"{result[side]} leaks across packed documents: changing document {leak['doc']} of row "
                            f"{leak['row']} changed {worst} elsewhere by {leak[worst]['change']:.3g}"
                            + ("" if leak["out"]["inside_change"] else " (or the changed document's own output did not change)"))
    if timing:
        result["timing"] = {result[side]: time_ms(run, inputs) for side, run in runs.items()}
    result["failures"] = failures
    result["ok"] = not failures
    return result


def format_table(r: dict) -> str:
    """The compact report: errors, leak check, timing, verdict."""
    impl, vs = r["impl"], r["vs"]
    lines = [
        f"attention check: {impl} vs {vs}, {r['dtype']}, batch {r['batch']} x seq {r['seq']}, heads {r['heads']}/"
        f"{r['kv_heads']} of {r['head_dim']}, documents per row {r['documents_per_row']}, padding {r['padding_per_row']} "
        f"({r['device']}, {r['backend']}, jax {r['jax']})",
        f"relative error = max|x - ref| / max|ref|; limit vs f32 {r['tolerance']:.0e}",
        f"{'':<4} {impl + ' vs ' + vs:>20} {impl + ' vs f32':>20} {vs + ' vs f32':>20}",
    ]
    for name in QUANTITIES:
        e = r["errors"][name]
        cells = [f"{e[s]['rel']:.2e} ({e[s]['abs']:.1e})" for s in ("impl_vs", "impl_f32", "vs_f32")]
        lines.append(f"{name:<4} " + " ".join(f"{c:>20}" for c in cells))
    for side, leak in r["leak"].items():
        changes = ", ".join(f"{n} {leak[n]['change']:.3g}" for n in QUANTITIES)
        lines.append(f"leak {side}: change outside document {leak['doc']} of row {leak['row']}: {changes} (must be 0)")
    if "timing" in r:
        lines.append("forward + backward: " + ", ".join(f"{s} {t['best_ms']:.2f} ms" for s, t in r["timing"].items())
                     + f" (best of {TIMING_REPS}, jitted)")
    lines.append("verdict: " + ("ok" if r["ok"] else "FAIL: " + "; ".join(r["failures"])))
    return "\n".join(lines)


def resolve_impl(name: str, dtype: str, backend: str | None = None) -> str:
    """`auto` is cuDNN on GPU and blocked elsewhere (as model.attention_impl=auto); cuDNN named
    outright off a GPU, or in float32 (it takes bf16/fp16), is refused with the fix."""
    backend = backend or jax.default_backend()
    if name == "auto":
        return "cudnn" if backend == "gpu" else "blocked"
    if name == "cudnn" and backend != "gpu":
        raise UserError(f"llm bench attention --impl cudnn needs a GPU with cuDNN; this machine's JAX backend is {backend}; "
                        "use --impl blocked or xla to check on CPU")
    if name == "cudnn" and dtype == "float32":
        raise UserError("cuDNN attention takes bfloat16 inputs (or float16), not float32; use --dtype bfloat16")
    return name


def run(args: argparse.Namespace) -> dict:
    """The bench target (llm.bench.TARGETS["attention"]); raises UserError when a check fails,
    after printing the table and writing --json."""
    impl = resolve_impl(args.impl, args.dtype)
    vs = resolve_impl(args.vs, args.dtype)
    result = check_attention(impl, vs, batch=args.batch, seq=args.seq, heads=args.heads, kv_heads=args.kv_heads,
                             head_dim=args.head_dim, dtype=args.dtype, block=args.block, seed=args.seed)
    print(format_table(result))
    if not result["ok"]:
        if args.json_path:  # the CLI writes --json only after a run that returns
            Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
        raise UserError(f"attention check failed: {result['failures'][0]}")
    return result
