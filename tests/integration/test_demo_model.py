"""The demo models and GGUF files: converted once into the cache, atomically, and loaded from there."""

import os
import subprocess
import sys

import pytest

from kaggle_kit.errors import ConfigError, ModelNotFound
from kaggle_kit.models import cache_dir, demo_model_dir, resolve_model
from kaggle_kit.provision import DEMOS, demo_gguf_path

DEMO_DIRNAME = DEMOS["demo"].folder


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


def test_gemma3_demo_is_the_real_gemma_3_270m():
    """demo:gemma3: 18 layers, 15 with 512-token sliding windows, QK-norm, a 262k vocabulary, tied embeddings."""
    from transformers import AutoConfig

    path = resolve_model("demo:gemma3")
    assert path == cache_dir() / DEMOS["demo:gemma3"].folder
    cfg = AutoConfig.from_pretrained(path)
    assert cfg.model_type == "gemma3_text" and cfg.vocab_size == 262144 and cfg.num_hidden_layers == 18
    assert cfg.layer_types.count("sliding_attention") == 15 and cfg.sliding_window == 512
    assert cfg.tie_word_embeddings
    assert not list(path.glob("*.gguf"))  # the assembled GGUF is not kept beside the folder


def test_a_gguf_file_is_a_model_converted_once(tmp_path, monkeypatch):
    """--model FILE.gguf: converted into the cache under the file's hash, reused on the next call."""
    monkeypatch.setenv("KAGGLE_KIT_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "my-model.gguf"
    os.symlink(demo_gguf_path("demo"), gguf)
    first = resolve_model(gguf)
    assert first.parent == tmp_path / "cache" / "gguf" and first.name.startswith("my-model-")
    stamp = (first / "config.json").stat().st_mtime_ns
    assert resolve_model(str(gguf)) == first and (first / "config.json").stat().st_mtime_ns == stamp


def test_a_gguf_transformers_cannot_read_fails_with_its_name(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_KIT_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ConfigError, match="broken.gguf"):
        resolve_model(bad)
    assert not (tmp_path / "cache" / "gguf").exists() or not any((tmp_path / "cache" / "gguf").iterdir())
