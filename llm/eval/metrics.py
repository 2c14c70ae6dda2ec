"""Metrics, aggregations and standard errors as lm-evaluation-harness 0.4.13 computes them.

The numbers must equal lm-eval's to the last bit where it is deterministic, so each function
mirrors its counterpart in lm_eval/api/metrics.py (same float operations in the same order), and
the bootstrap draws exactly the Python `random` stream lm-eval draws (chunks of 1000 resamples,
chunk i seeded with i), generated with numpy's identical Mersenne Twister for speed.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np

BOOTSTRAP_ITERS = 100_000  # lm-eval's default `bootstrap_iters`


# ---------------------------------------------------------------- aggregations


def mean(arr: Sequence[float]) -> float:
    return sum(arr) / len(arr)


def median(arr: Sequence[float]) -> float:
    return sorted(arr)[len(arr) // 2]


def nanmean(arr: Sequence[float]) -> float:
    if len(arr) == 0 or all(np.isnan(arr)):
        return np.nan
    return np.nanmean(arr)


def weighted_mean(items: Sequence[tuple[float, float]]) -> float:
    a, b = zip(*items)
    return sum(a) / sum(b)


def perplexity(items: Sequence[float]) -> float:
    return math.exp(-mean(items))


def weighted_perplexity(items: Sequence[tuple[float, float]]) -> float:
    return math.exp(-weighted_mean(items))


def bits_per_byte(items: Sequence[tuple[float, float]]) -> float:
    return -weighted_mean(items) / math.log(2)


AGGREGATIONS: dict[str, Callable] = {
    "mean": mean,
    "median": median,
    "nanmean": nanmean,
    "perplexity": perplexity,
    "weighted_perplexity": weighted_perplexity,
    "bits_per_byte": bits_per_byte,
}


# ---------------------------------------------------------------- per-item metric functions


def exact_match(
    predictions,
    references,
    regexes_to_ignore=None,
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
    ignore_numbers: bool = False,
) -> dict:
    """lm-eval's `exact_match` (ported from HF evaluate), numpy string ops included."""
    if regexes_to_ignore is not None:
        for s in regexes_to_ignore:
            predictions = np.array([re.sub(s, "", x) for x in predictions])
            references = np.array([re.sub(s, "", x) for x in references])
    else:
        predictions = np.asarray(predictions)
        references = np.asarray(references)
    if ignore_case:
        predictions = np.char.lower(predictions)
        references = np.char.lower(references)
    if ignore_punctuation:
        table = string.punctuation.maketrans("", "", string.punctuation)
        predictions = np.char.translate(predictions, table=table)
        references = np.char.translate(references, table=table)
    if ignore_numbers:
        table = string.digits.maketrans("", "", string.digits)
        predictions = np.char.translate(predictions, table=table)
        references = np.char.translate(references, table=table)
    return {"exact_match": np.mean(predictions == references)}


def _squad_normalize(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(references: Sequence[str], predictions: Sequence[str]) -> float:
    """SQuAD-style token F1 of one prediction against one reference (lm-eval has no built-in
    generative F1; this is the SQuAD v2 script's `compute_f1`)."""
    gold = _squad_normalize(str(references[0])).split()
    pred = _squad_normalize(str(predictions[0])).split()
    if not gold or not pred:
        return float(gold == pred)
    common = Counter(gold) & Counter(pred)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def rouge(references: Sequence[str], predictions: Sequence[str], use_stemmer: bool = False) -> float:
    """ROUGE-L F-measure of one prediction against one reference (the `rouge_score` package)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    return scorer.score(str(references[0]), str(predictions[0]))["rougeL"].fmeasure


def count_words(text: str) -> int:
    """Words for word_perplexity, as lm-eval's Task.count_words."""
    return len(re.split(r"\s+", text))


# name -> (callable for generate_until or None for a passthrough, default aggregation,
#          higher_is_better, output types that produce it)
METRICS: dict[str, tuple[Callable | None, str, bool, tuple[str, ...]]] = {
    "acc": (None, "mean", True, ("loglikelihood", "multiple_choice")),
    "acc_norm": (None, "mean", True, ("multiple_choice",)),
    "acc_bytes": (None, "mean", True, ("multiple_choice",)),
    "acc_mutual_info": (None, "mean", True, ("multiple_choice",)),
    "perplexity": (None, "perplexity", False, ("loglikelihood",)),
    "word_perplexity": (None, "weighted_perplexity", False, ("loglikelihood_rolling",)),
    "byte_perplexity": (None, "weighted_perplexity", False, ("loglikelihood_rolling",)),
    "bits_per_byte": (None, "bits_per_byte", False, ("loglikelihood_rolling",)),
    "exact_match": (exact_match, "mean", True, ("multiple_choice", "generate_until")),
    "f1": (token_f1, "mean", True, ("generate_until",)),
    "rouge": (rouge, "mean", True, ("generate_until",)),
}

DEFAULT_METRICS = {
    "loglikelihood": ["perplexity", "acc"],
    "loglikelihood_rolling": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
    "multiple_choice": ["acc", "acc_norm"],
    "generate_until": ["exact_match"],
}


# ---------------------------------------------------------------- standard errors


def sample_stddev(arr: Sequence[float]) -> float:
    mu = mean(arr)
    return math.sqrt(sum([(x - mu) ** 2 for x in arr]) / (len(arr) - 1))


def mean_stderr(arr: Sequence[float]) -> float:
    return sample_stddev(arr) / math.sqrt(len(arr))


def bootstrap_stderr(f: Callable, xs: Sequence, iters: int) -> float:
    """lm-eval's bootstrap: `iters // 1000` chunks of min(1000, iters) resamples, chunk i drawn
    with `random.Random(i).choices(xs, k=len(xs))`. numpy's legacy Mersenne Twister seeded with
    [i] is the same generator as Python's Random(i), and `floor(random() * n)` is how
    `choices` picks, so the indices (and therefore the statistic) are identical."""
    xs = list(xs)
    n = len(xs)
    chunk = min(1000, iters)
    res: list[float] = []
    for i in range(iters // chunk):
        draws = np.random.RandomState([i]).random_sample(chunk * n)
        idx = np.floor(draws * float(n)).astype(np.int64).reshape(chunk, n)
        for row in idx.tolist():
            res.append(f([xs[j] for j in row]))
    return sample_stddev(res)


_BOOTSTRAPPABLE = {median, perplexity, nanmean}


def stderr(agg: Callable, items: Sequence, iters: int = BOOTSTRAP_ITERS) -> Any:
    """The `<metric>_stderr` lm-eval reports for aggregation `agg`: mean -> closed form,
    median/perplexity/nanmean -> bootstrap, anything else (weighted perplexity, bits per byte,
    custom aggregations) -> "N/A"; also "N/A" for a single item."""
    if iters <= 0 or len(items) <= 1:
        return "N/A"
    if agg in _BOOTSTRAPPABLE:
        return bootstrap_stderr(agg, items, iters)
    if agg is mean:
        return mean_stderr(items)
    return "N/A"
