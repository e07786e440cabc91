"""Where this code runs: Kaggle (commit run or scored rerun) or a local machine, and its folders.

Notebooks ask this module (and kaggle_kit.jobs.notebook, which builds their configs from it) instead of
testing paths themselves, so one notebook runs unchanged on Kaggle and in local Jupyter.
"""

from __future__ import annotations

import os
from pathlib import Path

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
