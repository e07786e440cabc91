"""Every shipped notebook runs headless (nbclient) on data/ with the demo model and leaves a valid submission."""

import json

import nbformat
import pytest
from nbclient import NotebookClient

from kaggle_kit import competitions
from kaggle_kit.config import ValidateConfig
from kaggle_kit.jobs import validate

from ..conftest import DATA, ROOT

NOTEBOOKS = ROOT / "notebooks"


def test_one_notebook_folder_per_kaggle_competition():
    assert {p.name for p in NOTEBOOKS.iterdir() if p.is_dir()} == set(competitions.on_kaggle())


@pytest.mark.parametrize("name", competitions.on_kaggle())
def test_notebook_runs_locally_and_writes_valid_submission(name, tmp_path):
    """Run from a folder whose data/ holds the first 8 rows of the sample (env.py finds the nearest data/)."""
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
        pd.read_csv(comp.file("test", DATA / name), dtype=str, keep_default_na=False).head(8).to_csv(test, index=False)
    else:
        shutil.copy(comp.file("test", DATA / name), test)
    if comp.spec.files.catalogue:
        shutil.copy(comp.file("catalogue", DATA / name), comp.file("catalogue", tmp_path / "data" / name))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    sub = tmp_path / "runs" / "notebooks" / name / "submission.csv"
    assert validate(ValidateConfig(name, str(sub), str(test))) == []
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "fallback" in printed


@pytest.mark.parametrize("name", competitions.on_kaggle())
def test_kernel_metadata_points_at_its_notebook(name):
    meta = json.loads((NOTEBOOKS / name / "kernel-metadata.json").read_text())
    assert (NOTEBOOKS / name / meta["code_file"]).is_file()
    assert meta["enable_internet"] is False and meta["competition_sources"] == [competitions.get(name).slug]


def test_top_level_kernel_metadata_points_at_a_notebook():
    meta = json.loads((ROOT / "kernel-metadata.json").read_text())
    assert (ROOT / meta["code_file"]).is_file()
    assert meta["machine_shape"] == "NvidiaTeslaT4" and meta["enable_internet"] is False
