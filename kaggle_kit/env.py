"""Where this code runs: Kaggle (commit run or scored rerun) or a local machine, and its folders.

Notebooks ask this module (and kaggle_kit.jobs.notebook, which builds their configs from it) instead of
testing paths themselves, so one notebook runs unchanged on Kaggle and in local Jupyter.
"""

from __future__ import annotations

import os
from pathlib import Path

# Kaggle's folders; KAGGLE_KIT_INPUT_DIR / KAGGLE_KIT_WORKING_DIR stand in for them when a test (or a
# rehearsal on another machine) plays a Kaggle kernel
KAGGLE_INPUT = Path(os.environ.get("KAGGLE_KIT_INPUT_DIR") or "/kaggle/input")
KAGGLE_WORKING = Path(os.environ.get("KAGGLE_KIT_WORKING_DIR") or "/kaggle/working")


def on_kaggle() -> bool:
    """True inside a Kaggle kernel (its image sets KAGGLE_KERNEL_RUN_TYPE)."""
    return "KAGGLE_KERNEL_RUN_TYPE" in os.environ or KAGGLE_WORKING.is_dir()


def is_commit_run() -> bool:
    """True in Kaggle's "save & commit" run of a code-competition kernel: on Kaggle, but not the scored
    rerun. Its test file is the public stub; the full run happens on the rerun."""
    return on_kaggle() and not is_rerun()


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


def handle_kind(handle: str) -> str | None:
    """'model' for a Kaggle Models handle (owner/model/framework/variation/version), 'dataset' for a
    dataset handle (owner/slug, optionally /path/in/it), None for anything else (a path, a name)."""
    import re

    if not isinstance(handle, str) or handle.startswith(("/", ".")) or "/" not in handle:
        return None
    parts = handle.split("/")
    if len(parts) == 5 and parts[4].isdigit():
        return "model"
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", parts[0]) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", parts[1]):
        return "dataset"
    return None


def input_path(handle: str) -> Path:
    """Where Kaggle mounts a handle's files: /kaggle/input/<model>/<framework>/<variation>/<version> for a
    model, /kaggle/input/<slug>/<path> for a dataset (or the path itself for anything else)."""
    kind = handle_kind(handle)
    parts = handle.split("/")
    if kind == "model":
        return KAGGLE_INPUT.joinpath(*parts[1:])
    if kind == "dataset":
        return KAGGLE_INPUT.joinpath(*parts[1:])
    return Path(handle)
