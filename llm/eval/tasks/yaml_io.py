"""Read an lm-eval task YAML: `!function module.fn` resolved from a .py file next to the YAML
(else an importable module), `include:` merged depth-first with the local keys winning, as
lm_eval/tasks/_yaml_loader.py does."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import yaml

from llm.errors import UserError

_Base = yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else yaml.SafeLoader


def _load_module(path: Path):
    name = str(path.with_suffix(""))
    mtime = path.stat().st_mtime_ns
    mod = sys.modules.get(name)
    if mod is not None and getattr(mod, "__mtime__", None) == mtime:
        return mod
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"cannot load {path} for a `!function` tag; check the file")
    mod = importlib.util.module_from_spec(spec)
    mod.__mtime__ = mtime  # type: ignore[attr-defined]
    spec.loader.exec_module(mod)
    sys.modules[name] = mod
    return mod


def import_function(qual: str, base_dir: Path, yaml_path: Path):
    mod_path, _, fn_name = qual.rpartition(".")
    if not mod_path:
        raise UserError(f"{yaml_path}: `!function {qual}` has no module; write it as !function utils.{qual}")
    local = (base_dir / f"{mod_path.replace('.', '/')}.py").resolve()
    if local.exists():
        mod = _load_module(local)
    else:
        try:
            mod = importlib.import_module(mod_path)
        except ImportError:
            raise UserError(f"{yaml_path}: `!function {qual}`: no {local} and no importable module {mod_path!r}; put {mod_path}.py next to the YAML") from None
    if not hasattr(mod, fn_name):
        raise UserError(f"{yaml_path}: `!function {qual}`: module {mod_path!r} has no {fn_name!r}; fix the name")
    return getattr(mod, fn_name)


def _loader(path: Path) -> type:
    class Loader(_Base):  # type: ignore[misc,valid-type]
        pass

    def ctor(loader, node):
        return import_function(loader.construct_scalar(node), path.parent, path)

    yaml.add_constructor("!function", ctor, Loader=Loader)
    return Loader


def load_yaml(path: str | Path, _seen: set[Path] | None = None) -> dict[str, Any]:
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"task file {path} does not exist; pass the path of an lm-eval task YAML")
    seen = _seen if _seen is not None else set()
    if path in seen:
        raise UserError(f"{path}: include cycle; remove the `include:` that leads back to it")
    seen.add(path)
    try:
        with path.open("rb") as fh:
            cfg = yaml.load(fh, Loader=_loader(path))  # noqa: S506  (SafeLoader + !function only)
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a mapping of task keys, got {type(cfg).__name__}; write an lm-eval task YAML")
    if "include" not in cfg:
        return cfg
    includes = cfg.pop("include")
    merged: dict[str, Any] = {}
    for inc in includes if isinstance(includes, list) else [includes]:
        inc_path = Path(inc) if Path(inc).is_absolute() else path.parent / inc
        if not inc_path.is_file():
            raise UserError(f"{path}: include {inc!r} not found at {inc_path}; fix the include path")
        inc_cfg = load_yaml(inc_path, seen)
        inc_cfg.pop("task_list", None)
        merged.update(inc_cfg)
    merged.update(cfg)
    return merged
