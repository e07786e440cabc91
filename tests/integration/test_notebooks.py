"""Every shipped notebook runs headless (nbclient) on data/ with the demo model and leaves a valid submission."""

import json

import nbformat
import pytest
from nbclient import NotebookClient

from kaggle_kit import competitions
from kaggle_kit.config import ValidateConfig
from kaggle_kit.jobs import validate

from ..conftest import DATA, ROOT, shortest_lmsys_rows

NOTEBOOKS = ROOT / "notebooks"


def test_one_notebook_folder_per_kaggle_competition():
    assert {p.name for p in NOTEBOOKS.iterdir() if p.is_dir()} == set(competitions.on_kaggle())


@pytest.mark.parametrize("name", competitions.on_kaggle())
def test_notebook_runs_locally_and_writes_valid_submission(name, tmp_path):
    """Run from a folder whose data/ holds the first 4 rows of the sample (env.py finds the nearest data/)."""
    import shutil

    import pandas as pd

    path = NOTEBOOKS / name / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert len(nb.cells) <= 6, "notebooks stay thin: the work lives in the package"
    for comp in competitions.COMPETITIONS:
        (tmp_path / "data" / comp).mkdir(parents=True)
    comp = competitions.get(name)
    test = comp.file("test", tmp_path / "data" / name)
    if test.suffix == ".csv":
        pd.read_csv(comp.file("test", DATA / name), dtype=str, keep_default_na=False).head(4).to_csv(test, index=False)
    else:
        shutil.copy(comp.file("test", DATA / name), test)
    if comp.spec.files.catalogue:  # its first 400 items: embedding Eedi's 2,587 adds time, not coverage
        catalogue = pd.read_csv(comp.file("catalogue", DATA / name), dtype=str, keep_default_na=False)
        catalogue.head(400).to_csv(comp.file("catalogue", tmp_path / "data" / name), index=False)
    printed = execute(nb, tmp_path, {"KAGGLE_KIT_HEARTBEAT": "0.0001"})
    sub = tmp_path / "runs" / "notebooks" / name / "submission.csv"
    assert validate(ValidateConfig(name, str(sub), str(test))) == []
    assert "fallback" in printed and "\nvalid\n" in printed and "heartbeat" in printed


def execute(nb, folder, env: dict) -> str:
    """Run a notebook headless in `folder` with `env` added to its kernel's environment; its printed text
    (stdout, stderr and displayed results)."""
    import os

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            texts.append(out.get("text", "") + str(out.get("data", {}).get("text/plain", "")))
    return "".join(texts)


@pytest.mark.parametrize("rerun", [False, True], ids=["commit_run", "scored_rerun"])
def test_lmsys_notebook_on_kaggle_commit_run_and_scored_rerun(tmp_path, rerun):
    """Kaggle played locally: /kaggle/input and /kaggle/working stand-ins, the model attached where its
    handle mounts (the demo model), the adapter not attached. The commit run predicts a few rows and
    leaves the fallback for the rest; the scored rerun predicts every row; both leave a valid file."""
    import os

    import pandas as pd

    from kaggle_kit.models import demo_model_dir

    comp = competitions.get("lmsys")
    inputs, working = tmp_path / "input", tmp_path / "working"
    (inputs / comp.slug).mkdir(parents=True)
    working.mkdir()
    # the 7 shortest rows (a tenth of the first 7's tokens): what is checked is which rows are predicted
    rows = shortest_lmsys_rows(pd.read_csv(DATA / "lmsys" / "train.csv", dtype=str, keep_default_na=False)).head(7)
    rows.drop(columns=["model_a", "model_b", "winner_model_a", "winner_model_b", "winner_tie"]).to_csv(
        inputs / comp.slug / "test.csv", index=False
    )
    model = inputs / "gemma-2" / "transformers" / "gemma-2-9b-it" / "2"
    model.parent.mkdir(parents=True)
    os.symlink(demo_model_dir(), model)
    env = {
        "KAGGLE_KERNEL_RUN_TYPE": "Batch", "KAGGLE_KIT_INPUT_DIR": str(inputs),
        "KAGGLE_KIT_WORKING_DIR": str(working), "KAGGLE_IS_COMPETITION_RERUN": "1" if rerun else "",
    }  # fmt: skip
    nb = nbformat.read(NOTEBOOKS / "lmsys" / "lmsys.ipynb", as_version=4)
    printed = execute(nb, tmp_path, env)
    sub = pd.read_csv(working / "submission.csv")
    assert (
        validate(ValidateConfig("lmsys", str(working / "submission.csv"), str(inputs / comp.slug / "test.csv"))) == []
    )
    prior = sub.iloc[:, 1:].round(6).eq([round(p / sum(comp.prior), 6) for p in comp.prior]).all(axis=1)
    assert int((~prior).sum()) == (7 if rerun else 4)  # commit run: SMOKE_ROWS rows, the rest the fallback
    assert "is not attached" in printed


@pytest.mark.parametrize("name", competitions.on_kaggle())
def test_kernel_metadata_points_at_its_notebook(name):
    meta = json.loads((NOTEBOOKS / name / "kernel-metadata.json").read_text())
    assert (NOTEBOOKS / name / meta["code_file"]).is_file()
    assert meta["enable_internet"] is False and meta["competition_sources"] == [competitions.get(name).slug]


def test_top_level_kernel_metadata_points_at_a_notebook():
    meta = json.loads((ROOT / "kernel-metadata.json").read_text())
    assert (ROOT / meta["code_file"]).is_file()
    assert meta["machine_shape"] == "NvidiaTeslaT4" and meta["enable_internet"] is False
