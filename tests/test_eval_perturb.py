"""Robustness perturbations: deterministic, each changes the text in its own way."""

import re
import subprocess
import sys

import pytest

from llm.errors import UserError
from llm.eval.perturb import DISTRACTORS, PERTURBATIONS, perturb_text

TEXT = "Question: Which planet is known as the Red Planet, and why? Answer with one word."


@pytest.mark.parametrize("kind", PERTURBATIONS)
def test_deterministic_and_seeded(kind):
    a = perturb_text(TEXT, kind, seed=3)
    assert a != TEXT and a == perturb_text(TEXT, kind, seed=3)
    assert len({perturb_text(TEXT, kind, seed=s) for s in range(8)}) > 1


def test_same_output_in_another_process():  # not Python's salted hash()
    code = f"from llm.eval.perturb import perturb_text; print(repr(perturb_text({TEXT!r}, 'typo', 5)))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": str(h), "JAX_PLATFORMS": "cpu"}).stdout for h in (1, 2)}
    assert outs == {repr(perturb_text(TEXT, "typo", 5)) + "\n"}


def test_each_kind_changes_text_its_way():
    typo = perturb_text(TEXT, "typo", 0)
    assert typo.split(" ") != TEXT.split(" ") and len(typo.split(" ")) == len(TEXT.split(" "))
    assert re.sub(r"\s+", " ", typo) == typo  # spacing untouched
    case = perturb_text(TEXT, "case", 0)
    assert case != TEXT and case.lower() == TEXT.lower()
    space = perturb_text(TEXT, "whitespace", 0)
    assert space != TEXT and re.sub(r"\s+", "", space) == re.sub(r"\s+", "", TEXT)
    distracted = perturb_text(TEXT, "distractor", 0)
    assert distracted.endswith(" " + TEXT) and distracted[: -len(TEXT) - 1] in DISTRACTORS


def test_nothing_to_perturb_is_unchanged():
    assert perturb_text("1234", "typo", 0) == "1234"
    assert perturb_text("", "case", 0) == ""


def test_unknown_kind_is_one_line_error():
    with pytest.raises(UserError) as err:
        perturb_text(TEXT, "shuffle", 0)
    msg = str(err.value)
    assert "\n" not in msg and "'shuffle'" in msg and all(k in msg for k in PERTURBATIONS)
