"""The configs a notebook runs: the same call on Kaggle (the competition's input folder, the attached
model, /kaggle/working) and locally (data/, the demo model, runs/notebooks/)."""

from __future__ import annotations

from pathlib import Path

from ..config import PredictConfig
from ..env import KAGGLE_INPUT, KAGGLE_WORKING, on_kaggle, repo_data_dir


def predict_config(competition: str, kaggle_model: str, local_model: str = "demo", **overrides) -> PredictConfig:
    """A PredictConfig for here: on Kaggle the competition's test file, the given model folder and
    /kaggle/working/submission.csv; locally data/<competition>/ (a spec file of your own: the test file
    beside it), `local_model` and runs/notebooks/."""
    from ..competitions import COMPETITIONS, get

    comp = get(competition)
    if on_kaggle():
        paths = dict(
            data=str(KAGGLE_INPUT / comp.slug / comp.spec.files.test),
            model=kaggle_model,
            out=str(KAGGLE_WORKING / "submission.csv"),
        )
    else:
        shipped = competition in COMPETITIONS
        data = repo_data_dir() / comp.name if shipped else comp.spec.folder
        runs = (data.parent.parent if shipped else Path.cwd()) / "runs" / "notebooks" / comp.name
        paths = dict(data=str(data / comp.spec.files.test), model=local_model, out=str(runs / "submission.csv"))
    return PredictConfig(str(competition), **{**paths, **overrides})
