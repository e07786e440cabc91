"""The demo model: converted once from the GGUF into the cache, atomically, and loaded from there."""

import os
import subprocess
import sys

import pytest

from kaggle_kit.errors import ModelNotFound
from kaggle_kit.models import DEMO_DIRNAME, cache_dir, demo_model_dir, resolve_model


def test_demo_dir_is_a_complete_safetensors_folder():
    path = demo_model_dir()
    assert path == cache_dir() / DEMO_DIRNAME
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    # no temp dirs of a conversion left beside it
    assert not [p for p in path.parent.iterdir() if p.name.startswith(f".{DEMO_DIRNAME}.")]


def test_conversion_into_fresh_cache_is_atomic(tmp_path):
    """A conversion killed midway leaves only a temp dir, which a later run ignores and replaces."""
    env = {**os.environ, "KAGGLE_KIT_CACHE": str(tmp_path)}
    leftover = tmp_path / f".{DEMO_DIRNAME}.crashed"
    leftover.mkdir(parents=True)
    (leftover / "config.json").write_text("{half written")
    code = (
        "from kaggle_kit.models import demo_model_dir; from transformers import AutoConfig; "
        "print(AutoConfig.from_pretrained(demo_model_dir()).model_type)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "llama"
    assert (tmp_path / DEMO_DIRNAME / "model.safetensors").stat().st_size > 100_000_000


def test_missing_model_lists_what_exists(tmp_path):
    with pytest.raises(ModelNotFound) as e:
        resolve_model(tmp_path / "nothing-here")
    assert "demo" in e.value.available and "never fetched from a hub" in str(e.value)


def test_greedy_answer_is_sensible(demo_model):
    """The real model answers a plain question (guards against a broken conversion)."""
    from kaggle_kit.infer import generate
    from kaggle_kit.templates import render

    model, tok = demo_model
    out, _ = generate(model, tok, [render(tok, "What is the capital of France?")], max_new_tokens=12, progress=False)
    assert "Paris" in out[0]
