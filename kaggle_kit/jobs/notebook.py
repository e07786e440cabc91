"""The configs a notebook runs: the same call on Kaggle (the competition's input folder, the attached
model, /kaggle/working) and locally (data/, the demo model, runs/notebooks/).

Kaggle runs a code-competition kernel twice: once when it is saved ("commit run", against the public
test file, a stub of a few rows) and again when it is scored (the rerun, against the hidden test). The
commit run only has to finish and leave a valid submission, so there the config predicts SMOKE_ROWS rows
under a short budget (the rest keep the fallback row); the rerun runs the whole recipe.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import PredictConfig
from ..env import KAGGLE_INPUT, KAGGLE_WORKING, handle_kind, input_path, is_commit_run, on_kaggle, repo_data_dir

log = logging.getLogger("kaggle_kit")

SMOKE_ROWS = 4  # rows a commit run predicts: the model loads, the recipe runs, the kernel ends in minutes
SMOKE_BUDGET = "20m"


def predict_config(
    competition: str,
    kaggle_model: str,
    local_model: str = "demo",
    kaggle_adapter: str | None = None,
    **overrides,
) -> PredictConfig:
    """A PredictConfig for here. On Kaggle: the competition's test file, the model (and adapter) a Kaggle
    handle or /kaggle/input path names, /kaggle/working/submission.csv, and a smoke run in the commit pass.
    Locally: data/<competition>/ (a spec file of your own: the test file beside it), `local_model`, no
    adapter, runs/notebooks/; a Kaggle handle in `context` / `mean_prompt` is left out there (said in the
    log), as the files it names are on Kaggle only."""
    from ..competitions import COMPETITIONS, get

    comp = get(competition)
    if on_kaggle():
        paths = dict(
            data=str(KAGGLE_INPUT / comp.slug / comp.spec.files.test),
            model=str(_on_kaggle(kaggle_model)),
            adapter=_attached("adapter", kaggle_adapter),
            out=str(KAGGLE_WORKING / "submission.csv"),
        )
        for key in ("context", "mean_prompt"):
            overrides[key] = _attached(key, overrides.get(key))
        if is_commit_run():
            log.info("commit run: %d rows under %s (the scored rerun runs them all)", SMOKE_ROWS, SMOKE_BUDGET)
            paths.update(limit_rows=SMOKE_ROWS, budget=SMOKE_BUDGET)
    else:
        shipped = competition in COMPETITIONS
        data = repo_data_dir() / comp.name if shipped else comp.spec.folder
        runs = (data.parent.parent if shipped else Path.cwd()) / "runs" / "notebooks" / comp.name
        paths = dict(data=str(data / comp.spec.files.test), model=local_model, out=str(runs / "submission.csv"))
        for key in ("context", "mean_prompt"):
            value = overrides.get(key)
            if value and not Path(value).exists():
                log.info("local run: %s %s is a file on Kaggle; left out here", key, value)
                overrides[key] = None
    if not overrides.get("mean_prompt"):
        overrides["append_mean_prompt"] = False
    return PredictConfig(str(competition), **{**paths, **overrides})


def _attached(what: str, name: str | None) -> str | None:
    """The folder or file a recipe's handle names on Kaggle; None (and a warning: the recipe runs without
    it) when it is not attached to the kernel."""
    if not name:
        return None
    path = _on_kaggle(name)
    if not path.exists():
        log.warning("%s %s is not attached (no %s): the run goes on without it", what, name, path)
        return None
    return str(path)


def _on_kaggle(name: str) -> Path:
    """A Kaggle handle or a /kaggle/input path as the folder it is here (KAGGLE_INPUT may stand in)."""
    if handle_kind(name):
        return input_path(name)
    if str(name).startswith("/kaggle/input/"):
        return KAGGLE_INPUT / str(name)[len("/kaggle/input/") :]
    return Path(name)
