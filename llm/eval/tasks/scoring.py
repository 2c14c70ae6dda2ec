"""Scoring a task as lm-eval's evaluator does: responses -> filter pipelines -> process_results per
doc -> aggregation + stderr, plus the per-item samples in lm-eval's layout."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from llm.errors import UserError
from llm.eval import metrics as M
from llm.eval.filters import DEFAULT_PIPELINE, build_pipeline

if TYPE_CHECKING:
    from llm.eval.tasks.task import Request, Task


@dataclass
class TaskScores:
    metrics: dict[str, Any]  # "acc,none": 0.5, "acc_stderr,none": 0.1 (or "N/A", as lm-eval)
    higher_is_better: dict[str, Any]
    samples: list[dict] = field(default_factory=list)


def _hash(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, set):
        return list(o)
    return str(o)


def _plain(x: Any) -> Any:
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


class Scorer:
    """The metric functions, aggregations and filters of one task (ConfigurableTask.__init__)."""

    def __init__(self, task: "Task"):
        self.task = task
        cfg = task.cfg
        self.metric_fns: dict[str, Callable | None] = {}
        self.kwargs: dict[str, dict] = {}
        self.aggregation: dict[str, Callable] = {}
        self.higher_is_better: dict[str, Any] = {}
        if cfg["metric_list"] is None:
            for name in M.DEFAULT_METRICS[task.output_type]:
                spec = M.METRICS[name]
                self.metric_fns[name], self.kwargs[name] = spec[0], {}
                self.aggregation[name] = M.AGGREGATIONS[spec[1]]
                self.higher_is_better[name] = spec[2]
        else:
            for entry in cfg["metric_list"]:
                name = entry["metric"]
                kwargs = {k: v for k, v in entry.items() if k not in ("metric", "aggregation", "higher_is_better", "hf_evaluate")}
                if cfg["process_results"] is not None:
                    fn, kwargs = None, {}
                elif callable(name):
                    fn, name = name, name.__name__
                else:
                    fn = M.METRICS[name][0]
                self.metric_fns[name], self.kwargs[name] = fn, kwargs
                agg = entry.get("aggregation")
                if isinstance(agg, str):
                    self.aggregation[name] = M.AGGREGATIONS[agg]
                elif callable(agg):
                    self.aggregation[name] = agg
                else:
                    self.aggregation[name] = M.AGGREGATIONS[M.METRICS[name][1]]
                if "higher_is_better" in entry:
                    self.higher_is_better[name] = entry["higher_is_better"]
                else:
                    self.higher_is_better[name] = M.METRICS[name][2] if name in M.METRICS else None
        where = f"task {task.name!r} filter_list"
        if cfg["filter_list"] is not None:
            self.pipelines = [
                build_pipeline(f["name"], [(s["function"], {k: v for k, v in s.items() if k != "function"}) for s in f["filter"]], where)
                for f in cfg["filter_list"]
            ]
        else:
            self.pipelines = [build_pipeline(*DEFAULT_PIPELINE)]

    # ------------------------------------------------------------------ process_results

    def process_results(self, doc_id: int, doc: dict, results: list) -> dict:
        task, cfg = self.task, self.task.cfg
        if callable(cfg["process_results"]):
            return cfg["process_results"](doc, results)
        use = list(self.metric_fns)
        out = task.output_type
        if out == "loglikelihood":
            ll, is_greedy = results[0]
            return {**({"perplexity": ll} if "perplexity" in use else {}), **({"acc": int(is_greedy)} if "acc" in use else {})}
        if out == "loglikelihood_rolling":
            (ll,) = results
            text = task.target(doc_id, doc)
            words, nbytes = M.count_words(text), len(text.encode("utf-8"))
            res = {}
            for name, n in (("word_perplexity", words), ("byte_perplexity", nbytes), ("bits_per_byte", nbytes)):
                if name in use:
                    res[name] = (ll, n)
            return res
        if out == "multiple_choice":
            return self._multiple_choice(doc_id, doc, results, use)
        return self._generate(doc_id, doc, results)

    def _multiple_choice(self, doc_id: int, doc: dict, results: list, use: list[str]) -> dict:
        task = self.task
        lls, is_greedy = zip(*results, strict=True)
        choices = task.choices(doc_id, doc)
        completion_len = np.array([float(len(c)) for c in choices])
        byte_length = np.array([float(len(c.encode("utf-8"))) for c in choices])
        if 2 * len(choices) == len(lls) and "acc_mutual_info" in self.metric_fns:
            lls_unconditional = lls[len(choices):]
            lls = lls[: len(choices)]
        pred = np.argmax(lls)
        pred_norm = np.argmax(lls / completion_len)
        pred_byte = np.argmax(lls / byte_length)
        gold = task.render.text(doc, task.cfg["doc_to_text"], _where(task, doc_id)) if task.multiple_input else task.target(doc_id, doc)
        if isinstance(gold, list):
            gold = [i if i < len(choices) else -100 for i in gold]
        elif isinstance(gold, int):
            gold = gold if gold < len(choices) else -100
        elif isinstance(gold, str):
            gold = choices.index(gold) if gold in choices else -100
        if task.multiple_target:
            acc = 1.0 if pred in gold else 0.0
            acc_norm = 1.0 if pred_norm in gold else 0.0
            acc_bytes = 1.0 if pred_byte in gold else 0.0
            em = int(any(is_greedy[i] if i != -100 else 0 for i in gold))
        else:
            acc = 1.0 if pred == gold else 0.0
            acc_norm = 1.0 if pred_norm == gold else 0.0
            acc_bytes = 1.0 if pred_byte == gold else 0.0
            em = int(is_greedy[gold]) if gold != -100 else 0
        res: dict[str, Any] = {}
        for name, value in (("acc", acc), ("acc_norm", acc_norm), ("acc_bytes", acc_bytes), ("exact_match", em)):
            if name in use:
                res[name] = value
        if "acc_mutual_info" in use:
            mi = [c - u for c, u in zip(lls, lls_unconditional, strict=True)]
            res["acc_mutual_info"] = 1.0 if np.argmax(mi) == gold else 0.0
        return res

    def _generate(self, doc_id: int, doc: dict, results: list) -> dict:
        task = self.task
        gold = task.target(doc_id, doc)
        result = results[0]
        if task.cfg["doc_to_choice"] is not None:
            gold = task.choices(doc_id, doc)[gold]
        elif task.multiple_target:
            gold = list(gold)
        elif type(gold) is not type(result) and not isinstance(result, list):
            gold = type(result)(gold)
        res: dict[str, Any] = {}
        for metric, fn in self.metric_fns.items():
            kw = self.kwargs[metric]
            if task.multiple_target:
                golds = gold if isinstance(gold, list) else [gold]
                if metric == "exact_match":
                    score = fn(references=golds, predictions=[result] * len(golds), **kw)["exact_match"]
                    res[metric] = 1.0 if score > 0.0 else 0.0
                    continue
                scores = []
                for g in golds:
                    s = _call_metric(fn, g, result, kw)
                    scores.append(s[metric] if isinstance(s, dict) else s)
                res[metric] = 1.0 if any(scores) else 0.0
                continue
            s = _call_metric(fn, gold, result, kw)
            if isinstance(s, dict):
                for k, v in s.items():
                    res[k] = v
                    self.aggregation.setdefault(k, self.aggregation[metric])
                    self.higher_is_better.setdefault(k, self.higher_is_better[metric])
            else:
                res[metric] = s
        return res

    # ------------------------------------------------------------------ score

    def score(self, docs: Sequence[tuple[int, dict]], requests: Sequence["Request"], responses: Sequence) -> TaskScores:
        """responses[i] answers requests[i]: (logprob, is_greedy) | float | list[str] (len repeats)."""
        if len(requests) != len(responses):
            raise UserError(f"task {self.task.name!r}: {len(responses)} responses for {len(requests)} requests")
        repeats = self.task.cfg["repeats"]
        resps = []
        for req, resp in zip(requests, responses):
            if req.kind == "generate_until":
                resps.append(list(resp))
            elif req.kind == "loglikelihood":
                resps.append([(float(resp[0]), bool(resp[1]))] * repeats)
            else:
                resps.append([float(resp)] * repeats)
        doc_of = dict(docs)
        req_docs = [doc_of[r.doc_id] for r in requests]
        filtered = {p.name: p.apply(resps, req_docs) for p in self.pipelines}
        by_doc: dict[int, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            by_doc[r.doc_id].append(i)
        for idxs in by_doc.values():
            idxs.sort(key=lambda i: requests[i].idx)
        raw: dict[tuple[str, str], list] = defaultdict(list)
        samples: list[dict] = []
        for key, fresps in filtered.items():
            for doc_id, doc in docs:
                idxs = by_doc[doc_id]
                metrics = self.process_results(doc_id, doc, [fresps[i] for i in idxs])
                target = self.task.target(doc_id, doc)
                sample = {
                    "doc_id": doc_id, "doc": doc, "target": target,
                    "arguments": [requests[i].args for i in idxs],
                    "resps": [resps[i] for i in idxs],
                    "filtered_resps": [fresps[i] for i in idxs],
                    "filter": key, "metrics": list(metrics.keys()),
                    "doc_hash": _hash(json.dumps(doc, indent=2, default=_jsonable, ensure_ascii=False)),
                    "prompt_hash": _hash(requests[idxs[0]].args[0]),
                    "target_hash": _hash(str(target)),
                }
                sample.update(metrics)
                samples.append(sample)
                for metric, value in metrics.items():
                    raw[(metric, key)].append(value)
        out: dict[str, Any] = {}
        for (metric, key), items in raw.items():
            agg = self.aggregation.get(metric, M.mean)
            out[f"{metric},{key}"] = _plain(agg(items))
            out[f"{metric}_stderr,{key}"] = _plain(M.stderr(agg, items))
        return TaskScores(out, dict(self.higher_is_better), samples)


def _call_metric(fn: Callable, gold: Any, result: Any, kw: dict) -> Any:
    try:
        return fn(references=[gold], predictions=[result], **kw)
    except TypeError:  # lm-eval's fallback for metrics that take one [gold, result] item
        return fn([gold, result])


def _where(task: "Task", doc_id: int):
    from llm.eval.tasks.render import Where

    return Where(task.name, f"doc {doc_id}")
