"""The built-in corpus: real data present on every machine, from the running interpreter's
standard library sources (tests and private directories excluded).

Kinds (JSONL, one file per split, listed in DIR/manifest.json):
  pretrain:       {"text": module source, "module"}
  sft:            {"messages": [user: signature + docstring, assistant: the body], "module", "function"}
  preference:     {"prompt", "chosen": the real body, "rejected": a corrupted body, "corruption"}
  classification: {"text": a function's source, "label": int, "label_name": its top-level package}
Splits are held out by module (a hash of the module name), so no module is in both. The output
is a pure function of the interpreter's sources and the arguments.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from llm.data.sources import stdlib_files, stdlib_root
from llm.data.split import is_validation, key_fraction
from llm.errors import UserError

KINDS = ("pretrain", "sft", "preference", "classification")
SPLITS = ("train", "validation")
MANIFEST = "manifest.json"
PROMPT = "Complete this function from the Python standard library module `{module}`.\n\n{header}"


@dataclasses.dataclass(frozen=True)
class Function:
    module: str
    qualname: str
    header: str  # decorators, signature and docstring, dedented
    body: str  # the statements after the docstring
    statements: tuple[str, ...]  # the body split into top-level statements


def module_name(path: str, root: Path) -> str:
    rel = Path(path).relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _functions(source: str, module: str, max_chars: int) -> Iterator[Function]:
    """Functions and methods with a docstring and a body after it, in source order."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return
    lines = source.splitlines(keepends=True)

    def visit(node, prefix: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                yield from visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                fn = _function(child, lines, module, prefix, max_chars)
                if fn is not None:
                    yield fn

    yield from visit(tree, "")


def _function(node, lines: list[str], module: str, prefix: str, max_chars: int) -> Function | None:
    if len(node.body) < 2 or ast.get_docstring(node, clean=False) is None:
        return None
    start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
    doc_end = node.body[0].end_lineno
    header = textwrap.dedent("".join(lines[start:doc_end]))
    indent = len(lines[node.lineno - 1]) - len(lines[node.lineno - 1].lstrip())
    stmts = []
    for stmt in node.body[1:]:
        first = min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])]) - 1
        stmts.append("".join(_dedent_line(line, indent) for line in lines[first : stmt.end_lineno]))
    body = "".join(stmts)
    if not body.strip() or len(header) + len(body) > max_chars:
        return None
    return Function(module, prefix + node.name, header, body, tuple(stmts))


def _dedent_line(line: str, indent: int) -> str:
    """Remove the function's indentation, leaving lines of multi-line strings that start
    further left untouched."""
    if not line.strip():
        return line.lstrip(" \t")
    return line[indent:] if not line[:indent].strip() else line


def _corrupt(fn: Function, pool: list[Function], rng: np.random.Generator) -> tuple[str, str]:
    """(corrupted body, kind): another function's body, shuffled statements, or a truncated body."""
    options = ["other_body"]
    if len(fn.statements) >= 2:
        options.append("shuffled")
    if len(fn.body.splitlines()) >= 2:
        options.append("truncated")
    for _ in range(8):
        kind = options[int(rng.integers(len(options)))]
        if kind == "other_body":
            body = pool[int(rng.integers(len(pool)))].body
        elif kind == "shuffled":
            order = rng.permutation(len(fn.statements))
            body = "".join(fn.statements[i] for i in order)
        else:
            body_lines = fn.body.splitlines(keepends=True)
            body = "".join(body_lines[: max(1, len(body_lines) // 2)])
        if body != fn.body:
            return body, kind
    return "pass\n", "pass"


def _seed(key: str) -> int:
    return int(key_fraction(key, salt="builtin") * 2**63)


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def build_builtin(
    out: str | Path, *, eval_fraction: float = 0.1, max_chars: int = 1200, num_labels: int = 8, files: Sequence[str] | None = None
) -> dict:
    """Write the corpus under `out` and return the manifest (also written to out/manifest.json).
    `files` restricts it to some standard library files (default: all)."""
    out = Path(out)
    root = stdlib_root()
    records: dict[str, dict[str, list[dict]]] = {k: {s: [] for s in SPLITS} for k in KINDS}
    functions: dict[str, list[Function]] = {s: [] for s in SPLITS}
    skipped = 0
    packages_seen = []  # top-level names that are directories (packages), the classification labels
    for path in stdlib_files() if files is None else files:
        module = module_name(path, root)
        if len(Path(path).relative_to(root).parts) > 1:
            packages_seen.append(module.split(".")[0])
        split = "validation" if is_validation(module, eval_fraction) else "train"
        try:
            source = Path(path).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            skipped += 1
            continue
        if not source.strip():
            continue
        records["pretrain"][split].append({"text": source, "module": module})
        functions[split].extend(_functions(source, module, max_chars))
    all_functions = functions["train"] + functions["validation"]
    if not all_functions:
        raise UserError(f"no documented functions found under {root}; the built-in corpus needs the standard library sources")
    packages = set(packages_seen)
    counts = Counter(f.module.split(".")[0] for f in functions["train"] if f.module.split(".")[0] in packages)
    labels = [name for name, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:num_labels]]
    for split in SPLITS:
        pool = functions[split] if len(functions[split]) > 1 else all_functions
        for fn in functions[split]:
            prompt = PROMPT.format(module=fn.module, header=fn.header)
            key = f"{fn.module}.{fn.qualname}"
            records["sft"][split].append(
                {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": fn.body}], "module": fn.module, "function": fn.qualname}
            )
            rejected, kind = _corrupt(fn, pool, np.random.default_rng(_seed(key)))
            records["preference"][split].append({"prompt": prompt, "chosen": fn.body, "rejected": rejected, "corruption": kind, "function": key})
            package = fn.module.split(".")[0]
            if package in labels:
                records["classification"][split].append({"text": fn.header + fn.body, "label": labels.index(package), "label_name": package, "function": key})
    files, sizes = {}, {}
    for kind in KINDS:
        files[kind], sizes[kind] = {}, {}
        for split in SPLITS:
            rel = f"{kind}/{split}.jsonl"
            _write_jsonl(out / rel, records[kind][split])
            files[kind][split] = rel
            sizes[kind][split] = len(records[kind][split])
    manifest = {
        "name": "builtin",
        "description": "Python standard library sources of the interpreter that built it",
        "python": sys.version.split()[0],
        "source_root": str(root),
        "eval_fraction": eval_fraction,
        "max_chars": max_chars,
        "format": "jsonl",
        "files": files,
        "counts": sizes,
        "labels": labels,
        "unreadable_files": skipped,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def manifest_path_for(path: str) -> Path | None:
    """The manifest a data path names (the file itself or a directory holding one), else None."""
    p = Path(path)
    if p.name == MANIFEST and p.is_file():
        return p
    if p.is_dir() and (p / MANIFEST).is_file():
        return p / MANIFEST
    return None


def manifest_file(path: str | Path, kind: str, split: str) -> str:
    """Absolute path of the file of `kind` and `split` listed in a manifest."""
    manifest = Path(path)
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, json.JSONDecodeError, KeyError) as err:
        raise UserError(f"{str(path)!r} is not a corpus manifest ({err}); build one with `llm data builtin --out DIR`") from None
    if kind not in files or split not in files[kind]:
        raise UserError(f"manifest {str(path)!r} has no {kind}/{split} file; it lists {', '.join(sorted(files))}")
    return str(manifest.parent / files[kind][split])


def manifest_format(path: str | Path) -> str:
    """The source kind of a manifest's files (jsonl for the built-in corpus, arrayrecord or
    jsonl for `llm data curate` output)."""
    fmt = json.loads(Path(path).read_text()).get("format", "jsonl")
    if fmt not in ("jsonl", "arrayrecord"):
        raise UserError(f"manifest {str(path)!r} names format {fmt!r}; expected jsonl or arrayrecord")
    return fmt
