"""Where this code runs: Kaggle (commit run or scored rerun) or a local machine, and the paths that follow.

Notebooks ask this module instead of testing paths themselves, so one notebook runs unchanged on Kaggle
and in local Jupyter.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import PredictConfig

KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_WORKING = Path("/kaggle/working")


def on_kaggle() -> bool:
    """True inside a Kaggle kernel (its image sets KAGGLE_KERNEL_RUN_TYPE)."""
    return "KAGGLE_KERNEL_RUN_TYPE" in os.environ or KAGGLE_WORKING.is_dir()


def is_rerun() -> bool:
    """True in the scored rerun of a code competition, where the hidden test set replaces test.csv."""
    return bool(os.environ.get("KAGGLE_IS_COMPETITION_RERUN"))


def repo_data_dir(start: Path | None = None) -> Path:
    """The nearest `data/` folder holding competition samples, searching upward from `start` (cwd)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "data" / "science_exam").is_dir():
            return folder / "data"
    raise FileNotFoundError(f"no data/ folder with competition samples above {here}")


def predict_config(competition: str, kaggle_model: str, local_model: str = "demo", **overrides) -> PredictConfig:
    """A PredictConfig for here: on Kaggle the competition's test file, the given model folder and
    /kaggle/working/submission.csv; locally data/<competition>/ (a spec file of your own: the test file
    beside it), `local_model` and runs/notebooks/."""
    from .competitions import COMPETITIONS, get

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
