"""Quality heuristics and normalization on constructed good and bad documents."""

from __future__ import annotations

from pathlib import Path

from llm.config.loading import load_config
from llm.data.curate.normalize import normalize_text
from llm.data.curate.quality import quality_reason, quality_stats

ROOT = Path(__file__).resolve().parents[1]
PROSE = (
    "The committee met on Tuesday to review the proposal. Several members raised questions about the budget.\n"
    "After a long discussion, they agreed to revisit the plan next month. The chair thanked everyone for coming.\n"
    "Minutes will be circulated by Friday, and comments are welcome until the end of the week.\n"
)


def thresholds():
    q = load_config(ROOT / "configs/tiny.py").data.curate
    with q.unlocked():
        q.min_punct_line_frac = 0.5
        q.max_dup_line_frac = 0.3
        q.max_symbol_word_ratio = 0.1
        q.max_dup_ngram_frac = 0.15
    return q


def test_good_prose_passes_and_each_rule_fires():
    q = thresholds()
    assert quality_reason(quality_stats(PROSE), q) is None
    cases = {
        "chars": "Too short.",
        "mean_word_len": "a b c d e f g h i j k l m n o p q r s t u v w x y z a b c d e f g h i j k l m n o p.\n" * 2,
        "symbol_word_ratio": PROSE + "# # # # # # # # ... ... ... ... # # # # # # # # # # # # # # # # # #\n",
        "punct_line_frac": "\n".join(f"line number {i} without an ending mark here" for i in range(10)),
        "dup_line_frac": PROSE + "Click here to subscribe now.\n" * 12,
        "top_ngram_frac": "buy now " * 40 + PROSE,
        "dup_ngram_frac": PROSE + ("we will rock you every single day " * 6),
    }
    for rule, text in cases.items():
        failed = quality_reason(quality_stats(text), q)
        assert failed is not None and failed[0] == rule, (rule, failed)


def test_normalize():
    text = "Cafe\u0301\r\nline  with trailing   \n\n\n\n\tindented\x00 zero\u200bwidth\n\n"
    assert normalize_text(text) == "Caf\u00e9\nline  with trailing\n\n\tindented zerowidth\n"
    assert normalize_text(" \n\t\n") == ""
    assert normalize_text("\uff21", "NFKC") == "A\n"
    code = "def f():\n    return 1\n"
    assert normalize_text(code) == code
