"""kernel-metadata.json checks and kernel folder builds (pure Python, no client, no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaggle_kit.competitions import on_kaggle
from kaggle_kit.errors import ConfigError, KitError
from kaggle_kit.kaggle import metadata
from kaggle_kit.kaggle.secrets import find_secrets

ROOT = Path(__file__).resolve().parents[2]
GOOD = {
    "id": "kit-tester/kaggle-kit-lmsys",
    "title": "kaggle kit lmsys",
    "code_file": "lmsys.ipynb",
    "language": "python",
    "kernel_type": "notebook",
    "enable_gpu": True,
    "enable_internet": False,
    "machine_shape": "NvidiaTeslaT4",
    "dataset_sources": ["kit-tester/kaggle-kit-wheels"],
    "competition_sources": ["lmsys-chatbot-arena"],
    "model_sources": ["google/gemma-2/transformers/gemma-2-9b-it/2"],
}


def test_every_shipped_metadata_file_is_valid():
    files = [ROOT / "kernel-metadata.json", *sorted((ROOT / "notebooks").glob("*/kernel-metadata.json"))]
    assert len(files) == 1 + len(on_kaggle())
    for f in files:
        folder = f.parent
        assert metadata.check(metadata.read(f), folder) == [], f
        meta = metadata.read(f)
        assert meta["enable_internet"] is False and meta["machine_shape"] == "NvidiaTeslaT4", f


@pytest.mark.parametrize(
    "change, field, words",
    [
        ({"id": "no-slash"}, "id", "user/slug"),
        ({"id": "kit-tester/Kaggle_Kit"}, "id", "user/slug"),
        ({"title": "Kaggle Kit LMSYS v2"}, "title", "becomes slug 'kaggle-kit-lmsys-v2'"),
        ({"title": "abc"}, "title", "at least 5"),
        ({"code_file": "missing.ipynb"}, "code_file", "does not exist"),
        ({"enable_internet": True}, "enable_internet", "code competition"),
        ({"machine_shape": None}, "machine_shape", "P100"),
        ({"machine_shape": "NvidiaTeslaK80"}, "machine_shape", "not one of"),
        ({"enable_gpu": False}, "enable_gpu", "machine_shape"),
        ({"enable_gpu": "yes"}, "enable_gpu", "true or false"),
        ({"model_sources": ["google/gemma-2/transformers/gemma-2-9b-it"]}, "model_sources", "version a number"),
        ({"model_sources": ["google/gemma-2/transformers/gemma-2-9b-it/v2"]}, "model_sources", "framework"),
        ({"dataset_sources": ["just-a-slug"]}, "dataset_sources", "owner/dataset-slug"),
        ({"kernel_type": "app"}, "kernel_type", "notebook"),
    ],
)
def test_bad_metadata_names_the_field(tmp_path, change, field, words):
    (tmp_path / "lmsys.ipynb").write_text("{}")
    meta = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(ConfigError) as err:
        metadata.validate(meta, tmp_path)
    assert err.value.field == field
    assert words in str(err.value)


def test_prefixes_from_urls_and_pulled_metadata_are_removed():
    meta = metadata.normalise(
        {
            **GOOD,
            "id": "code/kit-tester/kaggle-kit-lmsys",
            "dataset_sources": ["https://www.kaggle.com/datasets/kit-tester/kaggle-kit-wheels/"],
            "kernel_sources": ["code/someone/their-kernel"],
            "competition_sources": ["https://www.kaggle.com/competitions/lmsys-chatbot-arena"],
            "model_sources": ["models/google/gemma-2/transformers/gemma-2-9b-it/2"],
        }
    )
    assert meta["id"] == "kit-tester/kaggle-kit-lmsys"
    assert meta["dataset_sources"] == ["kit-tester/kaggle-kit-wheels"]
    assert meta["kernel_sources"] == ["someone/their-kernel"]
    assert meta["competition_sources"] == ["lmsys-chatbot-arena"]
    assert meta["model_sources"] == ["google/gemma-2/transformers/gemma-2-9b-it/2"]
    assert metadata.check(meta) == []


def test_build_applies_flags_clears_outputs_and_validates(tmp_path):
    src = tmp_path / "nb"
    src.mkdir()
    nb = json.loads((ROOT / "notebooks" / "lmsys" / "lmsys.ipynb").read_text())
    nb["cells"][1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "local run output"}]
    nb["cells"][1]["execution_count"] = 3
    (src / "lmsys.ipynb").write_text(json.dumps(nb))
    (src / "kernel-metadata.json").write_text(json.dumps({**GOOD, "code_file": "lmsys.ipynb"}))
    out = metadata.build(
        src,
        tmp_path / "built",
        accelerator="p100",
        models=["meta/llama-3/transformers/8b-instruct/1"],
        kernel_id="kit-tester/lmsys-p100-run",
    )
    meta = metadata.read(out)
    assert meta["machine_shape"] == "NvidiaTeslaP100" and meta["enable_gpu"] is True
    assert meta["title"] == "lmsys p100 run" and meta["id"] == "kit-tester/lmsys-p100-run"
    assert meta["model_sources"][-1] == "meta/llama-3/transformers/8b-instruct/1"
    built = json.loads((out / "lmsys.ipynb").read_text())
    assert all(c.get("outputs", []) == [] for c in built["cells"])
    with pytest.raises(ConfigError, match="accelerator"):
        metadata.build(src, tmp_path / "x", accelerator="tpu9")
    assert not (tmp_path / "x").exists()


def test_build_refuses_a_notebook_holding_a_credential(tmp_path, monkeypatch):
    key = "s3cr3t-kaggle-key-0123456789"
    monkeypatch.setenv("KAGGLE_KEY", key)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    src = tmp_path / "nb"
    src.mkdir()
    cell = {"cell_type": "code", "source": f"os.environ['KAGGLE_KEY'] = '{key}'", "outputs": [], "metadata": {}}
    (src / "lmsys.ipynb").write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    (src / "kernel-metadata.json").write_text(json.dumps(GOOD))
    with pytest.raises(KitError, match="credential value appears in") as err:
        metadata.build(src, tmp_path / "built")
    assert key not in str(err.value)
    assert not (tmp_path / "built").exists()
    assert find_secrets([src]) == [str(src / "lmsys.ipynb")]


def test_build_takes_sources_from_the_notebooks_constants_and_refuses_an_unprovided_input(tmp_path):
    """Regression: model_sources was empty though the LMSYS notebook expects /kaggle/input/gemma-2/..."""
    src = tmp_path / "nb"
    src.mkdir()
    nb = json.loads((ROOT / "notebooks" / "lmsys" / "lmsys.ipynb").read_text())
    (src / "lmsys.ipynb").write_text(json.dumps(nb))
    (src / "kernel-metadata.json").write_text(json.dumps({**GOOD, "code_file": "lmsys.ipynb", "model_sources": []}))
    meta = metadata.read(metadata.build(src, tmp_path / "built"))
    assert meta["model_sources"] == ["google/gemma-2/transformers/gemma-2-9b-it/2"]
    assert "kagglekit/lmsys-gemma2-lora" in meta["dataset_sources"]
    nb["cells"][2]["source"] += '\nEXTRA = pd.read_csv("/kaggle/input/some-other-data/extra.csv")\n'
    (src / "lmsys.ipynb").write_text(json.dumps(nb))
    with pytest.raises(ConfigError, match="/kaggle/input/some-other-data"):
        metadata.build(src, tmp_path / "built2")
    assert not (tmp_path / "built2").exists()
