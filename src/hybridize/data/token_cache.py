"""On-disk cache of tokenized corpora: cache_dir()/tokens/<key>/{tokens.npy, doc_starts.npy, meta.json}.

The key is a hash of everything the tokens depend on (see `cache_key`), so a changed file, tokenizer or token budget
lands in a new entry instead of silently reusing stale tokens. An entry appears in one `os.replace` of a finished
temp folder: a crash (or a full disk) while writing leaves no entry, never a half-written one. Entries are read back
memory-mapped, so many processes (one per rank) share one copy in the page cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

import numpy as np

from .sources import BUILTIN_ITEMS, HELDOUT_EVERY, source_files

# Bump when the layout or the tokenization procedure changes, so old entries are not read as new ones.
FORMAT_VERSION = 1


def cache_key(items: list[str], tokenizer_json: str, eos_id: int, max_tokens: int | None) -> str:
    """A hex digest of (spec items, each local file's path + size + mtime, tokenizer content, EOS id, max_tokens).

    Files are fingerprinted by size and mtime, not content, so that a cache hit on a 50 GB corpus costs a few
    stat calls; an edit that keeps both the size and the mtime (to the nanosecond) goes unnoticed."""
    parts = {
        "format": FORMAT_VERSION,
        "sources": [_source_fingerprint(item) for item in items],
        "tokenizer": hashlib.sha256(tokenizer_json.encode("utf-8")).hexdigest(),
        "eos_id": eos_id,
        "max_tokens": max_tokens,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def _source_fingerprint(item: str) -> dict:
    if item in BUILTIN_ITEMS:  # a function of the Python version (see sources.builtin_corpus, stdlib_code)
        return {"spec": item, "python": sys.version.split()[0], "heldout_every": HELDOUT_EVERY}
    files = source_files(item)
    if files is None:  # a Hugging Face dataset name: identified by its name only
        return {"spec": item}
    stats = [(f, f.stat()) for f in files]
    return {"spec": item, "files": [[str(f.resolve()), st.st_size, st.st_mtime_ns] for f, st in stats]}


def read_entry(directory: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(tokens, doc_starts) memory-mapped read-only, or None when the entry is missing or unreadable.

    Only the structure is checked here (files, headers, sizes, the counts in meta.json); the caller checks the
    offsets themselves."""
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        tokens = np.load(directory / "tokens.npy", mmap_mode="r")
        doc_starts = np.load(directory / "doc_starts.npy", mmap_mode="r")
    except (OSError, ValueError, EOFError):  # missing file, damaged header, file shorter than its header says
        return None
    if not isinstance(meta, dict) or meta.get("num_tokens") != len(tokens) or meta.get("num_documents") != len(doc_starts) - 1:
        return None
    return tokens, doc_starts


def write_entry(directory: Path, tokens: np.ndarray, doc_starts: np.ndarray, meta: dict) -> None:
    """Write an entry atomically, replacing a damaged one at the same place.

    meta: what a person reading the folder wants to know (the spec, the tokenizer); the counts are added here."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        _save_synced(tmp / "tokens.npy", tokens)
        _save_synced(tmp / "doc_starts.npy", doc_starts)
        meta = {**meta, "num_tokens": len(tokens), "num_documents": len(doc_starts) - 1, "format": FORMAT_VERSION}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        if directory.exists():  # damaged (the caller found it unreadable): make room for the new one
            shutil.rmtree(directory, ignore_errors=True)
        try:
            os.replace(tmp, directory)
        except OSError:
            if read_entry(directory) is None:  # not another process that finished the same entry first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _save_synced(path: Path, array: np.ndarray) -> None:
    # fsync before the rename, or a machine crash could publish an entry whose data never reached the disk.
    with open(path, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
