"""Where training and evaluation text comes from.

A data spec is a path or a name, or a list of them, read in the order given (folders in sorted path order):

* a text file (any extension but .jsonl / .parquet): one document per file;
* a folder: every readable file below it, recursively;
* ``*.jsonl``: one document per line, from its ``text`` field;
* ``*.parquet``: one document per row, from its ``text`` column (needs pyarrow);
* anything else: a Hugging Face dataset name (``name``, ``name:config``, ``name:config:split``; split defaults to
  ``train``, column ``text``), when the `datasets` package is installed and the hub is reachable;
* ``None`` / ``"builtin"``: the built-in offline corpus (`builtin_corpus`); ``"builtin:train"`` and
  ``"builtin:heldout"`` are its two fixed, disjoint parts (`builtin_split`): train a teacher on the first and score
  perplexity on the second to measure text the model has not seen;
* ``"stdlib-code"``: the standard library's Python source itself (`stdlib_code`), ~6x the text of the built-in
  corpus, for a teacher that must not see the same text hundreds of times; ``"stdlib-code:train"`` and
  ``"stdlib-code:heldout"`` split it by module, with the module's docstrings: a module whose docstring document is
  in ``builtin:heldout`` has its source in ``stdlib-code:heldout``, so ``[builtin:train, stdlib-code:train]`` leaves
  ``builtin:heldout`` unseen.

Errors name the file (and line) and what was expected.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path

BUILTIN = "builtin"
BUILTIN_SPLITS = ("builtin:train", "builtin:heldout")
STDLIB_CODE = "stdlib-code"
STDLIB_CODE_SPLITS = ("stdlib-code:train", "stdlib-code:heldout")
# every built-in name: text derived from the running Python (its version decides the content)
BUILTIN_ITEMS = (BUILTIN, *BUILTIN_SPLITS, STDLIB_CODE, *STDLIB_CODE_SPLITS)
# One document in HELDOUT_EVERY (by hash) goes to the held-out part: on Python 3.11, 66 of 549 documents, 361K of
# 1.93M characters (documents differ in size): enough for 8 perplexity windows of 4 x 1024 tokens, or more.
HELDOUT_EVERY = 8


def cache_dir() -> Path:
    """Where hybridize keeps derived files (the built-in corpus, tokenized data): $HYBRIDIZE_CACHE or
    ~/.cache/hybridize."""
    return Path(os.environ.get("HYBRIDIZE_CACHE") or Path.home() / ".cache" / "hybridize")


@cache
def builtin_corpus() -> tuple[str, ...]:
    """Offline English text that ships with every CPython: the documentation topics of `pydoc_data` (the language
    reference behind `help()`) and the docstrings of the standard library's modules, classes and functions (tests,
    idlelib and site-packages left out), one document per module in sorted order. About 2 MB (550 documents) on
    Python 3.11; it varies a little with the Python version, which results files record. Built once (~10 s) and
    kept in `cache_dir()`."""
    return tuple(_cached("builtin-corpus", _build_builtin_corpus))


def _cached(name: str, build) -> list:
    """`build()`'s JSON-able result, kept in `cache_dir()` per Python version (it reads that Python's files)."""
    v = sys.version_info
    path = cache_dir() / f"{name}-py{v.major}.{v.minor}.{v.micro}.json"
    if path.exists():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass  # a damaged cache file is rebuilt below
    value = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(value), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home still gets the text, just not cached
    return value


def _heldout(doc: str) -> bool:
    """The split rule: a stable hash (sha256 of the text, so independent of order, Python's hash seed and the corpus
    growing by a module) in the held-out eighth."""
    import hashlib

    return int(hashlib.sha256(doc.encode("utf-8")).hexdigest()[:8], 16) % HELDOUT_EVERY == 0


def builtin_split(part: str) -> tuple[str, ...]:
    """"train" or "heldout": the built-in corpus's documents whose hash (`_heldout`) falls in the held-out eighth, or
    all the others."""
    if part not in ("train", "heldout"):
        raise ValueError(f"the built-in corpus splits are 'train' and 'heldout', got {part!r}")
    heldout = part == "heldout"
    return tuple(d for d in builtin_corpus() if _heldout(d) == heldout)


@cache
def stdlib_code() -> tuple[tuple[str, bool], ...]:
    """(source, held out) of every standard-library module the built-in corpus reads (the same files, in the same
    order: tests, idlelib, lib2to3 and site-packages left out). A module is held out when its docstring document
    is (`builtin:heldout`), or, without one, when its source's own hash says so. About 11 MB on Python 3.11. Built
    once (~10 s) and kept in `cache_dir()`."""
    def build():
        return [[source, _heldout(doc if doc is not None else source)] for _, source, doc in _stdlib_modules()]

    return tuple((source, bool(held)) for source, held in _cached("stdlib-code", build))


def stdlib_code_split(part: str) -> tuple[str, ...]:
    """"train" or "heldout" of `stdlib_code`."""
    if part not in ("train", "heldout"):
        raise ValueError(f"the stdlib-code splits are 'train' and 'heldout', got {part!r}")
    return tuple(source for source, held in stdlib_code() if held == (part == "heldout"))


def _build_builtin_corpus() -> list[str]:
    from pydoc_data.topics import topics

    docs = [topics[name].strip() for name in sorted(topics)]
    docs += [doc for _, _, doc in _stdlib_modules() if doc is not None]
    return docs


def _stdlib_modules() -> Iterator[tuple[Path, str, str | None]]:
    """(path, source, docstring document or None) of each standard-library module that parses, in sorted path order.
    The docstring document is the module's, classes' and functions' docstrings of more than 80 characters,
    duplicates dropped, joined by blank lines: one document of the built-in corpus."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "__pycache__", "lib2to3"}
    files = sorted(p for p in stdlib.rglob("*.py") if not skip.intersection(p.relative_to(stdlib).parts))
    for path in files:
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        parts = []
        for node in [tree, *ast.walk(tree)]:
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 80:
                    parts.append(doc.strip())
        yield path, source, ("\n\n".join(dict.fromkeys(parts)) if parts else None)


def corpus_info() -> str:
    return f"builtin corpus (pydoc topics + stdlib docstrings of Python {sys.version.split()[0]})"


def spec_items(spec: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[str]:
    """A data spec as the list of its items, in reading order (None is the built-in corpus)."""
    if spec is None:
        return [BUILTIN]
    if isinstance(spec, (str, os.PathLike)):
        return [str(spec)]
    items = [str(item) for item in spec]
    if not items:
        raise ValueError("no data sources given")
    return items


def source_files(item: str) -> list[Path] | None:
    """The local files one spec item reads, in reading order; None when it is not local (the built-in corpus, a
    Hugging Face dataset name). Raises the same errors as reading it: a missing path, an empty folder."""
    if item in BUILTIN_ITEMS:
        return None
    if item.startswith(BUILTIN + ":"):
        raise ValueError(f"unknown part of the built-in corpus {item!r}; allowed: {[BUILTIN, *BUILTIN_SPLITS]}")
    if item.startswith(STDLIB_CODE + ":"):
        raise ValueError(f"unknown part of the stdlib code {item!r}; allowed: {[STDLIB_CODE, *STDLIB_CODE_SPLITS]}")
    path = Path(item).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ValueError(f"data folder {path} holds no files")
        return files
    if path.is_file():
        return [path]
    if path.suffix or os.sep in item or item.startswith("."):
        raise FileNotFoundError(f"data source not found: {item}")
    return None


def check_sources(spec) -> None:
    """Raise now what reading `spec` would raise later for its local items (a missing path, an empty folder)."""
    for item in spec_items(spec):
        source_files(item)


def iter_documents(spec: str | os.PathLike | Sequence[str | os.PathLike] | None) -> Iterator[str]:
    """Yield the documents of a data spec (see the module docstring), in a deterministic order."""
    for item in spec_items(spec):
        yield from _iter_one(item)


def _iter_one(item: str) -> Iterator[str]:
    if item == BUILTIN:
        yield from builtin_corpus()
        return
    if item in BUILTIN_SPLITS:
        yield from builtin_split(item.split(":", 1)[1])
        return
    if item == STDLIB_CODE:
        yield from (source for source, _ in stdlib_code())
        return
    if item in STDLIB_CODE_SPLITS:
        yield from stdlib_code_split(item.split(":", 1)[1])
        return
    files = source_files(item)
    if files is None:
        yield from _iter_hf_dataset(item)
        return
    for f in files:
        yield from _iter_file(f)


def _iter_file(path: Path) -> Iterator[str]:
    if path.suffix == ".jsonl":
        yield from _iter_jsonl(path)
    elif path.suffix == ".parquet":
        yield from _iter_parquet(path)
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not UTF-8 text (text files, .jsonl and .parquet are accepted)") from None
        if text.strip():
            yield text


def _iter_jsonl(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict) or "text" not in record:
                found = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise ValueError(f"{path}:{lineno}: expected an object with a 'text' field, found {found}")
            if not isinstance(record["text"], str):
                raise ValueError(f"{path}:{lineno}: 'text' must be a string, got {type(record['text']).__name__}")
            if record["text"].strip():
                yield record["text"]


def _iter_parquet(path: Path) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"reading {path} needs pyarrow: pip install pyarrow") from None
    try:
        table = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises its own error types for corrupt files
        raise ValueError(f"{path} is not a readable parquet file ({err})") from None
    if "text" not in table.schema_arrow.names:
        raise ValueError(f"{path} has no 'text' column; columns: {table.schema_arrow.names}")
    for batch in table.iter_batches(columns=["text"]):
        for text in batch.column(0).to_pylist():
            if text and text.strip():
                yield text


def _iter_hf_dataset(name: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise FileNotFoundError(
            f"data source not found: {name} (no such file or folder, and it cannot be a Hugging Face dataset name "
            "because the `datasets` package is not installed)"
        ) from None
    parts = name.split(":")
    ds_name, config, split = parts[0], (parts[1] if len(parts) > 1 else None), (parts[2] if len(parts) > 2 else "train")
    try:
        ds = datasets.load_dataset(ds_name, config, split=split, streaming=True)
    except Exception as err:
        raise FileNotFoundError(f"data source not found: {name} (not a file, and loading it as a Hugging Face "
                                f"dataset failed: {type(err).__name__}: {err})") from None
    for record in ds:
        if "text" not in record:
            raise ValueError(f"Hugging Face dataset {name} has no 'text' column; columns: {sorted(record)}")
        if record["text"] and record["text"].strip():
            yield record["text"]
