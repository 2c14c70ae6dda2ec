"""One lm-eval task: its docs, the requests for each doc (few-shot context built exactly as
lm-eval's ConfigurableTask.fewshot_context / construct_requests), and scoring (scoring.py)."""

from __future__ import annotations

import copy
import inspect
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from llm.errors import UserError
from llm.eval.tasks import data
from llm.eval.tasks.config import check_config
from llm.eval.tasks.fewshot import SeededSampler
from llm.eval.tasks.render import Renderer, Where
from llm.eval.tasks.yaml_io import load_yaml

log = logging.getLogger("llm")


@dataclass(frozen=True)
class Request:
    """One model call, as lm-eval's Instance: kind, arguments, doc and choice index."""

    kind: str  # "loglikelihood" | "loglikelihood_rolling" | "generate_until"
    args: tuple
    doc_id: int
    idx: int
    repeats: int = 1


def _maybe_delimit(prefix: str | None, suffix: str | None, delimiter: str = " ") -> str:
    if not prefix:
        return suffix or ""
    if not suffix:
        return prefix or ""
    return prefix + suffix if (prefix[-1].isspace() or suffix[0].isspace()) else prefix + delimiter + suffix


def _requires_delimiter(prefix: str, suffix: str) -> bool:
    return prefix != "" and not (prefix[-1].isspace() or suffix[0].isspace())


def _serialize(value: Any) -> Any:
    """Callables -> their source (as lm-eval's TaskConfig.to_dict), recursively, so it is JSON-able."""
    if callable(value):
        try:
            return inspect.getsource(value)
        except (TypeError, OSError):
            return str(value)
    if isinstance(value, dict):
        return {k: _serialize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_serialize(v) for v in value]
    return value


class Task:
    """An lm-eval YAML task. Build with `load_task`."""

    def __init__(self, cfg: dict, path: Path, num_fewshot: int | None, fewshot_seed: int | None):
        self.cfg, self.path = cfg, path
        self.name: str = cfg["task"]
        self.output_type: str = cfg["output_type"]
        meta = cfg["metadata"]
        self.version: int | float | str = meta["version"] if "version" in meta else "Yaml"
        yaml_shots = cfg["num_fewshot"]
        if num_fewshot is not None and yaml_shots == 0:
            log.warning("num_fewshot is 0 for %s in its config; --num-fewshot %d is ignored (as lm-eval)", self.name, num_fewshot)
        elif num_fewshot is not None:
            cfg["num_fewshot"] = num_fewshot
        elif yaml_shots is None:
            cfg["num_fewshot"] = 0
        self.num_fewshot: int = int(cfg["num_fewshot"])
        if self.num_fewshot < 0:
            raise UserError(f"num_fewshot {self.num_fewshot} for task {self.name!r} must be >= 0")
        from llm.eval.tasks.scoring import Scorer  # scoring imports Request from here

        self.splits = data.load_splits(cfg, path)
        self._eval_docs = self._split_docs(cfg["test_split"] if cfg["test_split"] is not None else cfg["validation_split"])
        if not self._eval_docs:
            raise UserError(f"task {self.name!r}: the evaluation split is empty; check the data files")
        first = self._eval_docs[0]
        self.render = Renderer(self.name, list(first.keys()), cfg["doc_to_choice"] is not None)
        self.fs = cfg["fewshot_config"]
        self._sampler = self._make_sampler(fewshot_seed)
        where = Where(self.name, "doc 0")
        text = self.render.text(first, cfg["doc_to_text"], where)
        target = self.render.target(first, cfg["doc_to_target"], where)
        self.multiple_input = 0
        if cfg["doc_to_choice"] is not None and isinstance(text, int):
            self.multiple_input = len(self.render.choice(first, cfg["doc_to_choice"], where))
        self.multiple_target = len(target) if isinstance(target, list) else 0
        self.scorer = Scorer(self)

    # ------------------------------------------------------------------ docs

    def _split_docs(self, split: str | None) -> list[dict]:
        if split is None:
            return []
        if split not in self.splits:
            raise UserError(f"task {self.name!r}: split {split!r} is not in the data (have {sorted(self.splits)}); fix the *_split keys or data_files")
        rows = data.DocList(self.splits[split])
        pd = self.cfg["process_docs"]
        return list(pd(rows)) if pd is not None else list(rows)

    def _fewshot_pool(self) -> list[dict] | None:
        fs, cfg = self.fs, self.cfg
        if fs["split"] is not None:
            if fs["split"] not in self.splits:
                raise UserError(f"task {self.name!r}: fewshot split {fs['split']!r} is not in the data (have {sorted(self.splits)})")
            rows = data.DocList(self.splits[fs["split"]])
            return list(fs["process_docs"](rows)) if fs["process_docs"] is not None else list(rows)
        if cfg["fewshot_config"] is not None and fs["samples"] is not None:
            samples = fs["samples"]
            return list(samples() if callable(samples) else samples)
        for split in ("training_split", "validation_split", "test_split"):
            if cfg[split] is not None:
                return self._split_docs(cfg[split])
        return None

    def _make_sampler(self, seed: int | None) -> SeededSampler | None:
        pool = self._fewshot_pool()
        remove = self.fs["split"] == self.cfg["test_split"]
        sampler = SeededSampler(self.fs["sampler"], pool or [], seed, remove)
        sampler.check(self.num_fewshot, f"task {self.name!r} ({self.path})")
        return sampler

    def docs(self, limit: int | float | None = None) -> list[tuple[int, dict]]:
        """The evaluated docs (after process_docs); `limit` as lm-eval: a count, or a fraction < 1."""
        n = len(self._eval_docs)
        if limit is not None:
            n = min(n, int(math.ceil(n * limit)) if limit < 1.0 else int(limit))
        return list(enumerate(self._eval_docs[:n]))

    # ------------------------------------------------------------------ prompts

    def _qa_turn(self, q: Any, c: list | None, a: Any, gen_prefix: str | None, tgt: str, few: str, where: Where) -> str:
        if not isinstance(q, str):
            raise UserError(f"task {self.name!r}: {where.doc}: doc_to_text gave {type(q).__name__} {q!r}, not a string; fix doc_to_text")
        has_answer = a is not None and a != ""
        delim = tgt if has_answer and not gen_prefix else tgt if gen_prefix and _requires_delimiter(q, gen_prefix) else ""
        out = q + delim
        if has_answer:
            ans = c[a] if (c and isinstance(a, int)) else a[0] if isinstance(a, list) else a
            if not isinstance(ans, str):
                raise UserError(f"task {self.name!r}: {where.doc}: the answer {ans!r} is not a string; make doc_to_target a string or an index into doc_to_choice")
            out += _maybe_delimit(gen_prefix, ans, " ") + few
        elif gen_prefix:
            out += gen_prefix
        return out

    def _context(self, doc_id: int, doc: dict, transform: Callable[[str], str] | None) -> str | list[str]:
        cfg, fs, r = self.cfg, self.fs, self.render
        where = Where(self.name, f"doc {doc_id}")
        prefix = ""
        description = r.field(doc, cfg["description"], where, "description") or ""
        prefix += description
        for j, ex in enumerate(self._sampler.examples(doc_id, self.num_fewshot, self._eval_docs) if self.num_fewshot else []):
            w = Where(self.name, f"few-shot example {j} of doc {doc_id}")
            q = r.text(ex, fs["doc_to_text"], w)
            c = r.choice(ex, fs["doc_to_choice"], w) if fs["doc_to_choice"] else None
            a = r.target(ex, fs["doc_to_target"], w)
            gp = r.field(ex, fs["gen_prefix"], w, "gen_prefix")
            if self.multiple_input:
                q, c = c[q], None
            prefix += self._qa_turn(q, c, a, gp, fs["target_delimiter"], fs["fewshot_delimiter"], w)
        q = r.text(doc, cfg["doc_to_text"], where)
        c = r.choice(doc, cfg["doc_to_choice"], where) if cfg["doc_to_choice"] is not None else None
        r.target(doc, cfg["doc_to_target"], where)  # lm-eval evaluates it here too (errors surface now)
        gp = None
        if cfg["gen_prefix"] is not None:
            gp = doc[cfg["gen_prefix"]] if cfg["gen_prefix"] in r.features else r.field(doc, cfg["gen_prefix"], where, "gen_prefix")
        if self.multiple_input:
            if not isinstance(c, list):
                raise UserError(f"task {self.name!r}: {where.doc}: multiple inputs need doc_to_choice to give a list")
            return [prefix + self._qa_turn(ctx, None, None, gp, "", "", where) for ctx in c]
        if transform is not None and isinstance(q, str):
            q = transform(q)
        return prefix + self._qa_turn(q, c, None, gp, cfg["target_delimiter"], "", where)

    def requests(self, doc_id: int, doc: dict, *, transform: Callable[[str], str] | None = None) -> list[Request]:
        """lm-eval's Instances for one doc (multiple_choice -> one loglikelihood request per choice,
        then the unconditional ones when acc_mutual_info is asked for)."""
        ctx = self._context(doc_id, doc, transform)
        where = Where(self.name, f"doc {doc_id}")
        out, cfg = self.output_type, self.cfg
        if out == "loglikelihood":
            return [Request("loglikelihood", (ctx, self.render.target(doc, cfg["doc_to_target"], where)), doc_id, 0)]
        if out == "loglikelihood_rolling":
            return [Request("loglikelihood_rolling", (self.render.target(doc, cfg["doc_to_target"], where),), doc_id, 0)]
        if out == "generate_until":
            gk = copy.deepcopy(cfg["generation_kwargs"])
            return [Request("generate_until", (ctx, gk), doc_id, 0, cfg["repeats"])]
        choices = self.render.choice(doc, cfg["doc_to_choice"], where)
        delim = cfg["target_delimiter"]
        if self.multiple_input:
            cont = self.render.target(doc, cfg["doc_to_target"], where)
            args = [(c, f"{delim}{cont}") for c in ctx]
        else:
            args = [(ctx, f"{delim}{c}") for c in choices]
        if "acc_mutual_info" in self.scorer.metric_fns:
            args += [("", f"{delim}{c}") for c in choices]
        return [Request("loglikelihood", a, doc_id, i) for i, a in enumerate(args)]

    def target(self, doc_id: int, doc: dict) -> Any:
        return self.render.target(doc, self.cfg["doc_to_target"], Where(self.name, f"doc {doc_id}"))

    def choices(self, doc_id: int, doc: dict) -> list:
        return self.render.choice(doc, self.cfg["doc_to_choice"], Where(self.name, f"doc {doc_id}"))

    # ------------------------------------------------------------------ results

    def score(self, docs, requests, responses):
        """See scoring.Scorer.score."""
        return self.scorer.score(docs, requests, responses)

    def config_dict(self) -> dict:
        """What lm-eval writes under results["configs"][name]: the task config without null
        fields, callables as their source."""
        out = {}
        for k, v in self.cfg.items():
            if v is None:
                continue
            out[k] = _serialize(v)
        return out


def load_task(path: str | Path, *, num_fewshot: int | None = None, fewshot_seed: int = 1234) -> Task:
    """An lm-eval task YAML -> Task. `num_fewshot` overrides the YAML's (unless the YAML pins 0,
    as lm-eval); `fewshot_seed` seeds the few-shot sampler (lm-eval's fewshot_random_seed)."""
    path = Path(path).expanduser().resolve()
    cfg = check_config(load_yaml(path), path)
    return Task(cfg, path, num_fewshot, fewshot_seed)
