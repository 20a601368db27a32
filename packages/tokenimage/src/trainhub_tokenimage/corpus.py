"""Text sources: the standard library's docstrings (embedded default), text files and JSONL.

Every source yields :class:`Document` records in a deterministic order: plain text (``text``) or a
chat (``messages``: ``[{"role": "user", "content": "..."}, ...]``).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import sysconfig
import tempfile
import warnings
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Optional

from trainhub import UserError
from trainhub_tokenimage.tokenizer import ROLES

TEXT_SUFFIXES = (".txt", ".md", ".rst")
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "turtledemo", "ensurepip"}


@dataclass
class Document:
    key: str  # a stable name (file inside the source, file:line, qualified Python name): decides the train/val split
    text: str = ""
    messages: list[dict[str, str]] = field(default_factory=list)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _docstrings(node: ast.AST, prefix: str) -> Iterator[tuple[str, str]]:
    doc = ast.get_docstring(node, clean=True) if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) else None
    if doc:
        yield prefix, doc
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _docstrings(child, f"{prefix}.{child.name}")


def cache_dir() -> Path:
    """``$TRAINHUB_CACHE``, else ``$XDG_CACHE_HOME/trainhub``, else ``~/.cache/trainhub``."""
    if os.environ.get("TRAINHUB_CACHE"):
        return Path(os.environ["TRAINHUB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trainhub"


def _walk_stdlib(min_chars: int) -> Iterator[tuple[str, str]]:
    root = stdlib_root()
    files = sorted(p for p in root.rglob("*.py") if not _SKIP_DIRS.intersection(p.relative_to(root).parts[:-1]))
    for path in files:
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):
            continue
        rel = path.relative_to(root).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        for name, doc in _docstrings(tree, ".".join(parts)):
            if len(doc) >= min_chars:
                yield name, doc


def stdlib_docstrings(max_documents: Optional[int] = None, min_chars: int = 40) -> Iterator[Document]:
    """Docstrings of the standard library's modules, classes and functions, read from the source files
    with ``ast`` (nothing is imported, so no module runs). Files in sorted path order, definitions in
    source order; test suites and unparsable files are skipped.

    Parsing the whole library takes seconds, so the full list is cached as JSON under :func:`cache_dir`
    (keyed by the Python version and library path); a partial read (``max_documents``) without a cache
    walks only as far as needed.
    """
    root = stdlib_root()
    key = hashlib.sha1(f"{sys.version}|{root}|{min_chars}".encode()).hexdigest()[:12]
    path = cache_dir() / "tokenimage" / f"stdlib-docstrings-{sys.version_info[0]}.{sys.version_info[1]}-{key}.json"
    pairs: Optional[Iterable[tuple[str, str]]] = None
    if path.is_file():
        try:
            pairs = [tuple(x) for x in json.loads(path.read_text(encoding="utf-8"))]  # type: ignore[misc]
        except (OSError, ValueError):
            pairs = None
    if pairs is None and max_documents is None:
        pairs = list(_walk_stdlib(min_chars))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(pairs, f)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only home: parse again next time
    for name, doc in islice(pairs if pairs is not None else _walk_stdlib(min_chars), max_documents):
        yield Document(key=name, text=doc)


def _check_messages(messages: object, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    out = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise UserError(f"{where}: every message needs a role in {', '.join(ROLES)} and a string content; got {m!r:.80}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def read_jsonl(path: Path, name: Optional[str] = None) -> Iterator[Document]:
    """One JSON object per line with ``text`` or ``messages``; blank lines are skipped. Document keys are
    ``name:line`` (``name``: the file's name by default); errors name ``path:line``."""
    name = name or Path(path).name
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            where, key = f"{path}:{i}", f"{name}:{i}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: invalid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise UserError(f"{where}: expected a JSON object with 'text' or 'messages'")
            if "messages" in rec:
                yield Document(key=key, messages=_check_messages(rec["messages"], where))
            elif isinstance(rec.get("text"), str):
                yield Document(key=key, text=rec["text"])
            else:
                raise UserError(f"{where}: expected a 'text' string or a 'messages' list; keys: {', '.join(rec) or 'none'}")


def read_source(source: str | Path) -> Iterator[Document]:
    """A ``.jsonl`` file, a text file (one document), or a folder of both (recursive, sorted).

    Keys name files relative to the source (a single file: its name; in a folder: its path inside it, with ``/``),
    so the split does not depend on how the source is spelled or where it lies.
    """
    p = Path(source)
    if not p.exists():
        raise UserError(f"data source {p} does not exist (a text file, a .jsonl file, or a folder of them)")
    single = p.is_file()
    files = [p] if single else sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES + (".jsonl",))
    if not files:
        raise UserError(f"data source {p}: no {', '.join(TEXT_SUFFIXES + ('.jsonl',))} files in it")
    for f in files:
        name = f.name if single else f.relative_to(p).as_posix()
        if f.suffix.lower() == ".jsonl":
            yield from read_jsonl(f, name)
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            warnings.warn(f"skipping {f}: not UTF-8 text", stacklevel=2)
            continue
        if text.strip():
            yield Document(key=name, text=text)
