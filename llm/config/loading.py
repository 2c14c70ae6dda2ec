"""Load an ml-collections config file and apply `--config.a.b=value` overrides.

Configs are data: a Python file whose `get_config()` returns a ConfigDict. We lock it so a
typo in an override is an error naming the key and its closest valid neighbours, never a new
silently-ignored field.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
from pathlib import Path
from typing import Any, Iterable

import ml_collections

from llm.errors import ConfigError


def load_config_file(path: str | Path) -> ml_collections.ConfigDict:
    """Import `path`, call its `get_config()` and return the locked result."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass e.g. --config configs/tiny.py")
    spec = importlib.util.spec_from_file_location(f"_llm_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {str(path)!r} has no get_config(); define one returning a ConfigDict")
    config = module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"get_config() in {str(path)!r} returned {type(config).__name__}, expected a ConfigDict")
    config.lock()
    return config


def _keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for key, value in config.items():
        out.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            out.extend(_keys(value, prefix + key + "."))
    return out


def _unknown_key(config: ml_collections.ConfigDict, dotted: str) -> ConfigError:
    close = difflib.get_close_matches(dotted, _keys(config), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; run `llm config show` to list keys"
    return ConfigError(f"unknown config key {dotted!r}{hint}")


def parse_value(text: str, current: Any) -> Any:
    """Parse a command-line string into the type of the field it replaces."""
    if isinstance(current, bool):
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ConfigError(f"expected true/false, got {text!r}")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"expected an integer, got {text!r}") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"expected a number, got {text!r}") from None
    if isinstance(current, str):
        return text
    if isinstance(current, (tuple, list)):
        stripped = text.strip()
        if stripped.startswith(("(", "[")):
            try:
                value = ast.literal_eval(stripped)
            except (ValueError, SyntaxError):
                raise ConfigError(f"cannot parse {text!r} as a tuple") from None
            return tuple(value) if isinstance(value, (list, tuple)) else (value,)
        return tuple(part.strip() for part in stripped.split(",") if part.strip())
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def set_dotted(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
    """Set `config.<dotted>` from a string, keeping the field's type."""
    parts = dotted.split(".")
    node = config
    for part in parts[:-1]:
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise _unknown_key(config, dotted)
        node = node[part]
    leaf = parts[-1]
    if leaf not in node:
        raise _unknown_key(config, dotted)
    current = node[leaf]
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(f"config key {dotted!r} is a section; set one of its fields, e.g. {dotted}.{next(iter(current.keys()), 'x')}")
    try:
        value = parse_value(text, current)
    except ConfigError as err:
        raise ConfigError(f"--config.{dotted}: {err}") from None
    with node.unlocked():
        node[leaf] = value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> ml_collections.ConfigDict:
    """Apply `a.b=value` strings (the `--config.` prefix already stripped)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} has no value; write --config.{item}=VALUE")
        dotted, text = item.split("=", 1)
        set_dotted(config, dotted, text)
    return config


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Load a config file, apply overrides and validate the result."""
    from llm.config.validate import validate_config

    config = apply_overrides(load_config_file(path), overrides)
    validate_config(config)
    return config
