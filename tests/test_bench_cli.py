"""`llm bench [TARGET]` and `llm convert bench` dispatch through llm.bench.TARGETS: each target's
module is called with the parsed options and its figures go to --json. The targets' `run` are
replaced by recorders here; each target's own test file runs it for real."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from llm.bench import DEFAULT_TARGET, TARGETS
from llm.cli.main import main


@pytest.fixture
def calls(monkeypatch):
    """Replace every target module's run(args) by one that records args and returns figures."""
    seen = []
    for target in TARGETS.values():
        module = importlib.import_module(target.module)
        monkeypatch.setattr(module, "run", lambda args, name=target.name: seen.append((name, args)) or {"target": name})
    return seen


def test_every_target_module_has_run():
    for target in TARGETS.values():
        assert callable(importlib.import_module(target.module).run), target.name


def test_no_target_name_is_the_train_target(calls, tmp_path):
    out = tmp_path / "sub" / "bench.json"
    assert main(["bench", "--config", "configs/tiny.py", "--vs-hf", "--json", str(out), "--config.train.steps=3"]) == 0
    (name, args), = calls
    assert name == DEFAULT_TARGET == "train"
    assert (args.config, args.vs_hf, args.steps, args.config_overrides) == ("configs/tiny.py", True, 10, ["train.steps=3"])
    assert json.loads(out.read_text()) == {"target": "train"}


@pytest.mark.parametrize("argv, name, expect", [
    (["bench", "train", "--config", "c.py", "--steps", "2"], "train", {"steps": 2, "vs_hf": False}),
    (["bench", "checkpoint", "--config", "c.py", "--steps", "3"], "checkpoint", {"steps": 3}),
    (["bench", "data", "--config", "c.py"], "data", {"config": "c.py"}),
    (["bench", "generate", "--config", "c.py", "--vs-hf"], "generate", {"vs_hf": True}),
    (["bench", "finetune", "--config", "c.py", "--methods", "full,lora", "--out", "o"], "finetune", {"methods": "full,lora", "out": "o"}),
    (["bench", "convert", "--preset", "tiny"], "convert", {"preset": "tiny", "dtype": "float32"}),
    (["convert", "bench", "--preset", "small", "--dtype", "bfloat16"], "convert", {"preset": "small", "dtype": "bfloat16"}),
])
def test_each_target_gets_its_options(calls, argv, name, expect):
    assert main(argv) == 0
    (called, args), = calls
    assert called == name and {k: getattr(args, k) for k in expect} == expect


@pytest.mark.parametrize("argv, message", [
    (["bench"], "llm bench needs --config"),
    (["bench", "--steps", "3", "data", "--config", "c.py"], "--steps comes before the target name"),
    (["convert", "bench", "--config.model.d_model=8"], "takes no --config.* overrides"),
    (["bench", "convert", "--config.model.d_model=8"], "takes no --config.* overrides"),
])
def test_misplaced_options_are_one_line_errors(calls, capsys, argv, message):
    assert main(argv) == 2 and not calls
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_an_option_of_another_target_is_refused(calls, capsys):
    with pytest.raises(SystemExit):
        main(["bench", "data", "--config", "c.py", "--methods", "full"])
    assert "unrecognized arguments: --methods" in capsys.readouterr().err and not calls


def test_building_the_parser_imports_no_benchmark():
    """The target modules import JAX and PyTorch: only running a target may import them."""
    code = ("import sys; from llm.cli.main import build_parser; build_parser(); "
            f"print([m for m in {[t.module for t in TARGETS.values()]!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
