"""report.md and its plots for an evaluation, and the side-by-side table of `llm compare`.

The report holds the metrics table (lm-eval's look), a robustness table when perturbed runs
exist (clean vs perturbed score and the drop: how much worse, so positive = worse for both
higher- and lower-is-better metrics), metrics.png (per task, one bar per metric with its stderr)
and robustness.png (per task, clean vs perturbed bars).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from llm.eval.results import HIGHER_IS_BETTER_SYMBOLS, console_table, drop, markdown_table

REPORT_FILE = "report.md"
METRICS_PNG = "metrics.png"
ROBUSTNESS_PNG = "robustness.png"


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def task_metrics(entry: Mapping) -> list[tuple[str, float, float | None]]:
    """(metric key, value, stderr or None) for one results entry, sorted as make_table sorts."""
    out = []
    for key, value in sorted(entry.items()):
        metric, sep, filt = key.partition(",")
        if not sep or metric.endswith("_stderr") or not _number(value):
            continue
        se = entry.get(f"{metric}_stderr,{filt}")
        out.append((key, float(value), float(se) if _number(se) else None))
    return out


def robustness_rows(doc: dict, perturbed: Mapping | None = None) -> list[dict]:
    """One row per (perturbed task, metric): task, perturbation, metric key, clean, perturbed, drop.

    `perturbed` maps a perturbed task's name (task@kind) to its TaskResult (with clean_metrics)
    or to its results entry; without it, the document's own `robustness` section is used."""
    rows: list[dict] = []
    if perturbed is None:
        for name, item in (doc.get("robustness") or {}).items():
            for key, m in item["metrics"].items():
                rows.append({"task": item["task"], "perturbation": item["perturbation"], "metric": key, **m})
        return rows
    for name, item in perturbed.items():
        kind = getattr(item, "perturbation", None) or name.rpartition("@")[2]
        base = name[: -len(kind) - 1] if name.endswith(f"@{kind}") else name
        if hasattr(item, "scores"):
            metrics, hib = item.scores.metrics, item.scores.higher_is_better
            clean = item.clean_metrics if item.clean_metrics is not None else doc["results"].get(base, {})
        else:
            metrics, hib = item, doc.get("higher_is_better", {}).get(name, {})
            clean = doc["results"].get(base, {})
        for key, value, _ in task_metrics(metrics):
            if _number(clean.get(key)):
                c = float(clean[key])
                rows.append({"task": base, "perturbation": kind, "metric": key, "clean": c, "perturbed": value,
                             "drop": drop(c, value, hib.get(key.partition(",")[0]))})
    return rows


def robustness_table(rows: Sequence[dict]) -> str:
    headers = ["Task", "Perturbation", "Metric", "Clean", "Perturbed", "Drop", "Drop %"]
    body = []
    for r in rows:
        rel = f"{100 * r['drop'] / abs(r['clean']):.1f}" if r["clean"] else "N/A"
        body.append([r["task"], r["perturbation"], r["metric"], f"{r['clean']:.4f}", f"{r['perturbed']:.4f}", f"{r['drop']:.4f}", rel])
    return markdown_table(headers, body)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int, plt):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), dpi=100, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _label(key: str) -> str:
    """acc,none -> acc; exact_match,strict-match -> exact_match (strict-match)."""
    metric, _, filt = key.partition(",")
    return metric if filt in ("", "none") else f"{metric} ({filt})"


def plot_metrics(doc: dict, out_path: Path, skip: Sequence[str] = ()) -> Path | None:
    """Per task (perturbed re-runs left out), one bar per metric with its stderr as error bar."""
    skip = {*skip, *(doc.get("robustness") or {})}
    tasks = [(name, task_metrics(entry)) for name, entry in sorted(doc["results"].items()) if name not in skip]
    tasks = [(name, ms) for name, ms in tasks if ms]
    if not tasks:
        return None
    plt = _pyplot()
    fig, axes = _grid(len(tasks), plt)
    for ax, (name, ms) in zip(axes, tasks):
        hib = doc.get("higher_is_better", {}).get(name, {})
        labels = [f"{_label(k)} {HIGHER_IS_BETTER_SYMBOLS.get(hib.get(k.partition(',')[0]), '')}".strip() for k, _, _ in ms]
        values = [v for _, v, _ in ms]
        errors = [math.nan if se is None else se for _, _, se in ms]  # no error bar where stderr is N/A
        bars = ax.bar(range(len(ms)), values, yerr=errors, capsize=4, color="tab:blue")
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], label_type="center", color="white", fontsize=8)
        positive = [v for v in values if v > 0]
        if len(positive) == len(values) and max(values) / min(values) > 100:
            ax.set_yscale("log")  # perplexities beside bits per byte
        ax.set_xticks(range(len(ms)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_title(doc["results"][name].get("alias", name), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


def plot_robustness(rows: Sequence[dict], out_path: Path) -> Path | None:
    """Per (task, perturbation), clean vs perturbed bars for each metric."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["perturbation"]), []).append(r)
    if not groups:
        return None
    plt = _pyplot()
    fig, axes = _grid(len(groups), plt)
    width = 0.38
    for ax, ((task, kind), rs) in zip(axes, groups.items()):
        x = range(len(rs))
        ax.bar([i - width / 2 for i in x], [r["clean"] for r in rs], width, label="clean", color="tab:blue")
        ax.bar([i + width / 2 for i in x], [r["perturbed"] for r in rs], width, label=kind, color="tab:orange")
        ax.set_xticks(list(x), [_label(r["metric"]) for r in rs], rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{task}: clean vs {kind}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


def write_report(doc: dict, out_dir: Path, *, perturbed: Mapping | None = None) -> Path:
    """report.md (metrics table, robustness table when perturbed runs exist) and its PNG plots."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = doc.get("model_name") or doc.get("config", {}).get("model_args") or doc.get("model_source")
    lines = ["# Evaluation report", "", f"Model: `{model}`", ""]
    seconds = doc.get("total_evaluation_time_seconds")
    if seconds is not None:
        lines += [f"Evaluation time: {float(seconds):.1f} s", ""]
    lines += ["## Metrics", "", console_table(doc)]
    if plot_metrics(doc, out_dir / METRICS_PNG, skip=list(perturbed or ())):
        lines += [f"![metrics]({METRICS_PNG})", ""]
    rows = robustness_rows(doc, perturbed)
    if rows:
        lines += ["## Robustness", "",
                  "Drop: how much worse the perturbed score is (clean - perturbed for ↑ metrics, "
                  "perturbed - clean for ↓ metrics); positive means worse.", "", robustness_table(rows)]
        plot_robustness(rows, out_dir / ROBUSTNESS_PNG)
        lines += [f"![robustness]({ROBUSTNESS_PNG})", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def _run_cell(entry: Mapping | None, key: str, first: Mapping | None) -> str:
    """value ± stderr, and (+diff) against `first` (the first run's entry) when given."""
    if entry is None or key not in entry:
        return "-"
    value = entry[key]
    if not _number(value):
        return str(value)
    metric, _, filt = key.partition(",")
    se = entry.get(f"{metric}_stderr,{filt}")
    text = f"{value:.4f}" + (f" ± {se:.4f}" if _number(se) else "")
    base = None if first is None else first.get(key)
    if _number(base):
        text += f" ({value - base:+.4f})"
    return text


def compare_results_table(names: Sequence[str], docs: Sequence[dict]) -> str:
    """Eval metrics of several runs side by side: one row per task/filter/metric, one column per
    run (value ± stderr; later runs also show their difference to the first)."""
    keys: list[tuple[str, str]] = []
    for doc in docs:
        for task, entry in sorted(doc["results"].items()):
            for key, _, _ in task_metrics(entry):
                if (task, key) not in keys:
                    keys.append((task, key))
    keys.sort()
    rows, last = [], None
    for task, key in keys:
        metric, _, filt = key.partition(",")
        entries = [doc["results"].get(task) for doc in docs]
        shots = sorted({str(doc.get("n-shot", {}).get(task)) for doc in docs if task in doc["results"]})
        hib = next((doc.get("higher_is_better", {}).get(task, {}).get(metric) for doc in docs if task in doc["results"]), None)
        shown = task if task != last else ""
        rows.append([shown, filt, "/".join(shots), metric, HIGHER_IS_BETTER_SYMBOLS.get(hib, ""),
                     _run_cell(entries[0], key, None), *(_run_cell(e, key, entries[0]) for e in entries[1:])])
        last = task
    return markdown_table(["Tasks", "Filter", "n-shot", "Metric", "", *names], rows, right_columns=range(5, 5 + len(names)))


def metrics_by_task(doc: dict) -> dict[str, dict[str, Any]]:
    """A results document's metrics only ({task: {"acc,none": .., "acc_stderr,none": ..}}), for --json."""
    return {task: {k: v for k, v in entry.items() if "," in k} for task, entry in doc["results"].items()}
