"""The README's commands are the real ones: two set-up commands (main job, tests) and CI runs
the second verbatim; every `llm` command and config it names exists; the quickstart block is
what `llm quickstart` runs."""

import re
import shlex
from pathlib import Path

import pytest

from llm.cli.main import build_parser
from llm.cli.quickstart import quickstart_commands
from llm.config.base import base_config
from llm.config.loading import apply_overrides, load_config_file
from llm.errors import ConfigError

README = Path("README.md").read_text()


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def logical_lines(block: str) -> list[str]:
    joined = re.sub(r"\s*\\\n\s*", " ", block)
    return [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def test_exactly_two_setup_commands_and_ci_runs_the_test_one():
    blocks = bash_blocks(section("Set up on a fresh machine"))
    assert len(blocks) == 2
    main_job, tests = (logical_lines(b) for b in blocks)
    assert main_job == ["bash launch/local.sh"]
    assert len(tests) == 1 and "python3 -m venv .venv" in tests[0] and "'.[test,hf,tpu]'" in tests[0] and "pytest" in tests[0]
    ci = [line for line in Path(".ci/run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == tests
    assert "llm\" quickstart" in Path("launch/local.sh").read_text() or "llm quickstart" in Path("launch/local.sh").read_text()


def readme_commands() -> list[str]:
    """Every `llm ...` line of the README's bash blocks, also those a launcher runs after `--`."""
    commands = []
    for block in bash_blocks(README):
        for line in logical_lines(block):
            if line.startswith("llm "):
                commands.append(line)
            elif " -- llm " in line:
                commands.append(line.split(" -- ", 1)[1])
    return commands


def check_overrides(line: str, config_file: str | None, overrides: list[str]) -> None:
    """Each `--config.a.b=value` names a key of the command's config (its --config file, else the
    base schema) and parses as that key's type: the same check `llm` runs."""
    config = load_config_file(config_file) if config_file else base_config()
    config.lock()
    for item in overrides:
        try:
            apply_overrides(config, [item[len("--config."):]])
        except ConfigError as err:
            raise AssertionError(f"README command {line!r}: {item}: {err}") from None


def test_every_llm_command_in_the_readme_parses():
    parser = build_parser()
    commands = readme_commands()
    assert len(commands) >= 8
    checked = 0
    for line in commands:
        tokens = shlex.split(line)[1:]
        overrides = [a for a in tokens if a.startswith("--config.")]
        argv = [a for a in tokens if not a.startswith("--config.")]
        args = parser.parse_args(argv)  # exits (fails the test) on an unknown subcommand or flag
        assert callable(args.func)
        for token in argv:
            if token.startswith("configs/"):
                assert Path(token).is_file(), f"README names missing config {token}"
        check_overrides(line, getattr(args, "config", None), overrides)
        checked += len(overrides)
    assert checked >= 10


def test_override_check_catches_a_wrong_key_or_type():
    with pytest.raises(AssertionError, match="unknown config key 'train.stepz'"):
        check_overrides("llm train", "configs/tiny.py", ["--config.train.stepz=5"])
    with pytest.raises(AssertionError, match="expected an integer"):
        check_overrides("llm train", "configs/tiny.py", ["--config.train.steps=many"])
    check_overrides("llm generate", None, ["--config.mesh.fsdp=2"])


def test_quickstart_block_is_what_llm_quickstart_runs():
    block = bash_blocks(section("What the quickstart does"))[0]
    documented = [line for line in logical_lines(block)]
    actual = ["llm " + shlex.join(argv) for argv in quickstart_commands("runs/quickstart")]
    assert documented == actual
