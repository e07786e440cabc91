"""Shared fixtures: paths to data/, the real demo model (SmolLM2-135M-Instruct) loaded once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_subset(comp_name: str, tmp_path: Path, n: int, labelled: bool = False, split: str = "train") -> Path:
    """The first n rows of data/<comp>/<split>.csv (tiled with fresh ids if n is larger), as a new CSV."""
    import pandas as pd

    df = pd.read_csv(DATA / comp_name / f"{split}.csv", dtype=str, keep_default_na=False)
    reps = -(-n // len(df))
    df = pd.concat([df] * reps, ignore_index=True).head(n)
    df["id"] = [str(1000 + i) for i in range(n)]
    if not labelled:
        label_cols = {
            "science_exam": ["answer"],
            "prompt_recovery": ["rewrite_prompt"],
            "lmsys": ["model_a", "model_b", "winner_model_a", "winner_model_b", "winner_tie"],
        }
        df = df.drop(columns=[c for c in label_cols[comp_name] if c in df.columns])
    path = tmp_path / f"{comp_name}_{split}_{n}{'_labelled' if labelled else ''}.csv"
    df.to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def demo_model():
    """(model, tokenizer) of the demo model in the hardware profile's dtype."""
    from kaggle_kit.hardware import detect
    from kaggle_kit.models import load_model

    return load_model("demo", detect())
