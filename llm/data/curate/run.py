"""The curation pass: read -> normalize -> quality filters -> exact dedup -> near dedup ->
decontaminate -> PII scrub -> train/validation split by content hash -> shards + report.

One streaming pass over the input; memory holds one document, a few examples per stage and
the SQLite page cache of the dedup index, whatever the corpus size.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import ml_collections

from llm.data.builtin import manifest_file, manifest_format, manifest_path_for
from llm.data.curate.decontam import Decontaminator
from llm.data.curate.dedup import ExactDedup, Index, NearDedup
from llm.data.curate.normalize import normalize_text
from llm.data.curate.pii import scrub
from llm.data.curate.quality import quality_reason, quality_stats
from llm.data.curate.writer import ShardWriter
from llm.data.encode import text_of
from llm.data.mixture import parse_mixture
from llm.data.sources import BadRecord, open_source
from llm.data.split import key_fraction
from llm.data.tokenizer import ByteTokenizer, load_tokenizer
from llm.errors import UserError

STAGES = ("bad_input", "normalize", "quality", "exact_dedup", "near_dedup", "decontaminate", "pii")
REPORT = "report.json"


def _inputs(config: ml_collections.ConfigDict) -> list[tuple[Any, str]]:
    """(source, name) for everything curation reads: every record of every source, both splits
    of a corpus manifest."""
    d = config.data
    if d.source == "synthetic":
        raise UserError("data.source=synthetic has nothing to curate; set data.source and data.path")
    if d.mixture:
        return [(open_source(e.kind, e.path, data_dir=d.data_dir, record_format=d.record_format), f"{e.kind}:{e.path}") for e in parse_mixture(d.mixture)]
    manifest = manifest_path_for(d.path) if d.path else None
    if manifest is not None:
        fmt = manifest_format(manifest)
        return [(open_source(fmt, manifest_file(manifest, "pretrain", s)), f"{manifest}:pretrain/{s}") for s in ("train", "validation")]
    return [(open_source(d.source, d.path, split=d.split, data_dir=d.data_dir, record_format=d.record_format), d.path or "builtin")]


def _records(config) -> Iterator[tuple[Any, str]]:
    for source, _name in _inputs(config):
        for i in range(len(source)):
            yield source[i], source.where(i)


class _Stage:
    def __init__(self, name: str, keep_examples: int):
        self.name = name
        self.docs_removed = 0
        self.tokens_removed = 0
        self.docs_changed = 0
        self.reasons: dict[str, int] = {}
        self.examples: list[dict] = []
        self.keep = keep_examples

    def remove(self, text: str, tokens: int, reason: str, where: str, extra: dict | None = None) -> None:
        self.docs_removed += 1
        self.tokens_removed += tokens
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if len(self.examples) < self.keep:
            self.examples.append({"where": where, "reason": reason, "text": text[:300], **(extra or {})})

    def report(self) -> dict:
        out = {"stage": self.name, "docs_removed": self.docs_removed, "tokens_removed": self.tokens_removed}
        if self.docs_changed:
            out["docs_changed"] = self.docs_changed
        if self.reasons:
            out["reasons"] = dict(sorted(self.reasons.items(), key=lambda kv: -kv[1]))
        out["examples"] = self.examples
        return out


_FIXES = {
    "bad_input": "re-encode the input as UTF-8",
    "normalize": "the documents hold only whitespace or control characters",
    "quality": "relax the data.curate thresholds",
    "exact_dedup": "check the input",
    "near_dedup": "check the input",
    "decontaminate": "check data.curate.decontaminate",
    "pii": "check the input",
}


def _nothing_kept(docs_in: int, stages: dict[str, _Stage], report: Path) -> str:
    """Why every document went: each removing stage's main reason and first place, and the fix
    that stage calls for (bad input is fixed in the data, not by relaxing filters)."""
    causes, fixes = [], []
    for name in STAGES:
        stage = stages[name]
        if not stage.docs_removed:
            continue
        reason = max(stage.reasons, key=stage.reasons.get)
        first = next((e["where"] for e in stage.examples if e["reason"] == reason), "")
        causes.append(f"{stage.docs_removed} by {name} ({reason}{', first at ' + first if first else ''})")
        fix = _FIXES[name]
        if name == "bad_input" and "UTF-8" not in reason:
            fix = "fix the input records (or data.text_field / data.source)"
        if fix not in fixes:
            fixes.append(fix)
    return f"all {docs_in} documents were removed: {'; '.join(causes)} (report: {report}); {'; '.join(fixes)}"


def curate(config: ml_collections.ConfigDict, out: str | Path) -> dict:
    """Curate config.data's source into `out`; returns the report (also out/report.json)."""
    d, q = config.data, config.data.curate
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(d.tokenizer)
    count = (lambda t: len(t.encode("utf-8"))) if isinstance(tokenizer, ByteTokenizer) else (lambda t: len(tokenizer.encode(t)))
    stages = {name: _Stage(name, q.examples) for name in STAGES}
    pii_counts = {"email": 0, "ipv4": 0, "ipv6": 0, "phone": 0}
    index = Index(out / ".dedup.sqlite")
    exact = ExactDedup(index) if q.exact_dedup else None
    near = NearDedup(index, q.near_threshold, q.num_perm, q.bands, q.shingle) if q.near_dedup else None
    decontam = Decontaminator(q.decontaminate, q.decontam_ngram) if q.decontaminate else None
    writers = {s: ShardWriter(out, s, q.output_format, q.shard_docs) for s in ("train", "validation")}
    kept_tokens = {"train": 0, "validation": 0}
    docs_in = bytes_in = tokens_in = 0
    start = time.perf_counter()
    try:
        for doc_id, (record, where) in enumerate(_records(config)):
            docs_in += 1
            text = text_of(record, d.text_field, where)
            if isinstance(text, BadRecord):
                if d.bad_input == "fail":
                    raise UserError(f"bad input at {text.where}: {text.reason}; fix the data or set data.bad_input=skip")
                raw = record if isinstance(record, str) else ""
                stages["bad_input"].remove(raw, 0, text.reason, text.where)
                continue
            size = len(text.encode("utf-8"))
            bytes_in += size
            tokens = count(text)
            tokens_in += tokens
            clean = normalize_text(text, q.normalize)
            if clean != text:
                stages["normalize"].docs_changed += 1
            if not clean:
                stages["normalize"].remove(text, tokens, "empty after normalization", where)
                continue
            tokens = count(clean) if clean != text else tokens
            failed = quality_reason(quality_stats(clean), q)
            if failed is not None:
                stages["quality"].remove(clean, tokens, failed[0], where, {"detail": failed[1]})
                continue
            if exact is not None:
                first = exact.seen(clean, doc_id)
                if first is not None:
                    stages["exact_dedup"].remove(clean, tokens, "identical content", where, {"duplicate_of": first})
                    continue
            if near is not None:
                hit = near.seen(clean, doc_id)
                if hit is not None:
                    stages["near_dedup"].remove(clean, tokens, f"Jaccard >= {q.near_threshold}", where, {"duplicate_of": hit[0], "similarity": round(hit[1], 3)})
                    continue
            if decontam is not None:
                overlaps = decontam.overlaps(clean)
                if overlaps:
                    stages["decontaminate"].remove(clean, tokens, f"shares {q.decontam_ngram}-grams with evaluation data", where, {"overlapping_ngrams": overlaps})
                    continue
            if q.pii:
                scrubbed, found = scrub(clean)
                if scrubbed != clean:
                    stages["pii"].docs_changed += 1
                    for k, v in found.items():
                        pii_counts[k] += v
                    if len(stages["pii"].examples) < q.examples:
                        stages["pii"].examples.append({"where": where, "replacements": {k: v for k, v in found.items() if v}})
                    clean = scrubbed
                    tokens = count(clean)
            split = "validation" if key_fraction(clean, salt="curate") < q.eval_fraction else "train"
            writers[split].write({"text": clean, "id": doc_id})
            kept_tokens[split] += tokens
    finally:
        for w in writers.values():
            w.close()
        index.close()
    seconds = time.perf_counter() - start
    if docs_in == 0:
        raise UserError(f"data source {d.path or 'builtin'!r} yielded no documents; check data.source and data.path")
    report = {
        "input": {"source": d.source, "path": d.path or "builtin", "docs": docs_in, "bytes": bytes_in, "tokens": tokens_in, "tokenizer": d.tokenizer},
        "stages": [stages[name].report() for name in STAGES],
        "pii_replacements": pii_counts,
        "output": {
            split: {"docs": writers[split].count, "tokens": kept_tokens[split], "files": writers[split].files} for split in ("train", "validation")
        },
        "seconds": round(seconds, 3),
        "mb_per_s": round(bytes_in / 1e6 / seconds, 3) if seconds > 0 else None,
    }
    (out / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    if writers["train"].count + writers["validation"].count == 0:
        raise UserError(_nothing_kept(docs_in, stages, out / REPORT))
    manifest = {
        "name": "curated",
        "format": q.output_format,
        "files": {"pretrain": {s: writers[s].pattern for s in ("train", "validation") if writers[s].count}},
        "counts": {"pretrain": {s: writers[s].count for s in ("train", "validation")}},
        "report": REPORT,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return report
