"""Retrieval context (Science Exam's top solutions put Wikipedia passages before each question): read a
local passage file, embed it with sentence-transformers, take the top-k passages per question and keep as
many as fit a token budget of the LLM's tokenizer."""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path

from ..embed import retrieve  # noqa: F401  (re-exported: the retrieval of this playbook)
from ..errors import InputError
from ..io import read_text_csv

log = logging.getLogger("kaggle_kit")
_HITS: dict[str, list[list[int]]] = {}  # one retrieval per (passages, embedder, k, queries) in a process


@functools.lru_cache(maxsize=2)  # predict checks the file before the model loads, then uses it
def read_passages(path, column: str = "text") -> tuple[str, ...]:
    """The non-blank texts of `column` in a CSV or parquet passage file (e.g. a Wikipedia dump's chunks)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "passage file not found")
    if path.suffix != ".parquet":
        df = read_text_csv(path)  # the one CSV reader: BOM, encoding and malformed rows handled
    else:  # a dump of millions of chunks: read as is, not cell by cell as text
        try:
            df = pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise InputError(path, f"cannot read as parquet: {exc}") from None
    if column not in df.columns:
        raise InputError(path, f"no column {column!r}", column=column, expected=column, got=list(df.columns))
    texts = [str(t).strip() for t in df[column].fillna("").tolist()]
    texts = [t for t in texts if t]
    if not texts:
        raise InputError(path, "no non-blank passages", column=column)
    return tuple(texts)


def context_texts(tokenizer, passages: list[str], hits: list[list[int]], max_tokens: int) -> list[str]:
    """Per query, its passages in rank order while they fit `max_tokens` tokens; a first passage longer
    than the budget is cut to it, so every question gets some context."""
    out = []
    for row in hits:
        parts, used = [], 0
        for j in row:
            ids = tokenizer.encode(passages[j], add_special_tokens=False)
            if used + len(ids) + 1 > max_tokens:  # +1: the newline between passages
                if not parts:
                    parts.append(tokenizer.decode(ids[: max_tokens - 1]))
                break
            parts.append(passages[j])
            used += len(ids) + 1
        out.append("\n".join(parts))
    return out


def contexts(queries: list[str], tokenizer, cfg) -> list[str]:
    """The context text per query for a PredictConfig's `context` passage file and settings."""
    from ..embed import load_embedder

    passages = read_passages(cfg.context, cfg.context_column)
    key = hashlib.sha256(
        repr((str(cfg.context), cfg.context_column, cfg.embedder, cfg.context_k, queries)).encode()
    ).hexdigest()
    if key not in _HITS:
        log.info("retrieval: %d questions against %d passages from %s", len(queries), len(passages), cfg.context)
        _HITS[key] = retrieve(queries, passages, load_embedder(cfg.embedder), cfg.context_k)
    return context_texts(tokenizer, passages, _HITS[key], cfg.context_tokens)
