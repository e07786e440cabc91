"""Load base models, tokenizers and adapters from local paths only (never a hub).

A model is a local folder, a local GGUF file, or a demo model ('demo': SmolLM2-135M-Instruct,
'demo:gemma3': Gemma-3-270M); GGUF files are converted once into the cache (provision.py).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

from .env import KAGGLE_INPUT
from .errors import ConfigError, ModelNotFound
from .io import replace_folder
from .provision import DEMOS, cache_dir, demo_model_dir, gguf_model_dir

# No hub, ever: every load below is local; these make transformers fail instead of reaching out.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

log = logging.getLogger("kaggle_kit")

DEMO = "demo"


def available_models() -> list[str]:
    """What `--model` accepts here: the demo models and model folders under /kaggle/input and the cache."""
    found = list(DEMOS)
    for root in (KAGGLE_INPUT, cache_dir()):
        if root.is_dir():
            found += sorted(
                str(p.parent)
                for p in root.glob("**/config.json")
                if (p.parent / "tokenizer_config.json").exists() or list(p.parent.glob("*.safetensors"))
            )
    return found


def resolve_model(name: str | os.PathLike) -> Path:
    """A local model folder for a demo name ('demo', 'demo:gemma3'), a folder or a GGUF file; never a hub id."""
    if str(name) in DEMOS:
        return demo_model_dir(str(name))
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return path
    if path.suffix.lower() == ".gguf" and path.is_file():
        return gguf_model_dir(path)
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


def check_adapter(adapter: Path) -> Path:
    """`adapter` when it is an adapter folder (holds adapter_config.json), else ModelNotFound naming the
    adapter folders beside it."""
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


def adapter_defaults(adapters: list, name=None, quant=None, chat_format=None, template_kwargs=None) -> tuple:
    """(model, quant, chat_format, chat_template_kwargs) with each None filled from the adapters'
    kit_config.json: the base they name, how they were trained; else 'demo', 'none', 'auto', {}."""

    def first(key, default):
        return next((v for v in (adapter_setting(a, key) for a in adapters) if v), default)

    return (
        name if name is not None else first("base_model", DEMO),
        quant if quant is not None else first("quant", "none"),
        chat_format if chat_format is not None else first("chat_format", "auto"),
        template_kwargs if template_kwargs is not None else first("chat_template_kwargs", {}),
    )


def adapted_tokenizer(
    adapters: list, name=None, quant=None, chat_format=None, template_kwargs=None, tokenizer=None
) -> tuple:
    """(model folder, quant, transformers config, tokenizer with its chat format applied) for a base model
    and its adapters: each None filled from the adapters' kit_config.json as adapter_defaults does. The
    config is read first: an architecture transformers does not know is a ConfigError naming it.
    `tokenizer`: one this function returned for the same arguments, returned again instead of a new read."""
    from .templates import apply_chat_format

    name, quant, chat_format, template_kwargs = adapter_defaults(adapters, name, quant, chat_format, template_kwargs)
    path = resolve_model(name)
    config = load_config(path)
    if tokenizer is None:
        tokenizer = apply_chat_format(load_tokenizer(path), chat_format, template_kwargs)
    return path, quant, config, tokenizer


def load_model(
    name: str | os.PathLike | None,
    profile=None,
    adapter=None,
    quant: str | None = None,
    chat_format: str | None = None,
    fast_paths: bool = True,
    chat_template_kwargs: dict | None = None,
    tokenizer=None,
):
    """(model, tokenizer) from a local folder or 'demo', in the profile's device and dtype, eval mode.

    `adapter` is a peft adapter folder applied unmerged, or {name: folder} for several adapters loaded
    side by side (the first active; switch with model.set_adapter(name)). `name=None` takes the base
    model the adapter's kit_config.json names, else the demo model. `quant` holds the base in 'nf4' or
    'int8' (a 7-9B model needs one of them on a 15 GB T4); None = as the adapter was trained, else 'none'
    (adapters stay unmerged on a quantised base: merging into 4-bit weights changes the outputs).
    `chat_format` likewise: None = the adapter's (kit_config.json), else the tokenizer's own ('auto');
    and `chat_template_kwargs` ({'enable_thinking': False}): None = the adapter's, else the template's defaults.
    `fast_paths=False` computes as plain transformers does (infer/fast/: no prefix cache, pruning,
    fp32 label head, CPU attention, packed weights, 4-bit weights in training's layout). `tokenizer`: one
    adapted_tokenizer made for the same model, adapters and chat format (predict's label check reads it
    before the model loads; a 262k vocabulary takes seconds to read again).
    """

    from .hardware import detect, guard_half
    from .infer.fast.output_layer import contiguous_head

    adapters = adapter if isinstance(adapter, dict) else ({"default": adapter} if adapter is not None else {})
    found = adapted_tokenizer(list(adapters.values()), name, quant, chat_format, chat_template_kwargs, tokenizer)
    path, quant, config, tok = found
    profile = guard_half(profile or detect(), config.model_type)
    bnb = profile.quantization(quant)
    model = pretrained(
        path,
        dtype=profile.torch_dtype(),
        local_files_only=True,
        attn_implementation=attention_implementation(config, profile.device, fast_paths, profile.dtype),
        **device_map(profile),  # straight onto the GPU: no host-RAM copy of the weights first
        **({"quantization_config": bnb} if bnb else {}),
    )
    if adapters:
        from .heads import prepare_base

        items = [(n, check_adapter(Path(a))) for n, a in adapters.items()]
        prepare_base(model, [a for _, a in items])  # a classification adapter's head (heads.py)
        model = _load_adapters(model, items)
    model.eval()
    contiguous_head(model)  # not a fast path: the same numbers, without torch's slow frozen-weight product
    _set_fast_paths(model, profile.device == "cpu", fast_paths, quantised=bool(bnb))
    return model, tok


def _load_adapters(model, items: list):
    """The peft model of `model` with the adapters `items` ([(name, folder)]) loaded, the first active. An
    adapter whose LoRA weights find no place in the model is a ConfigError: peft only warns, and its layers
    would keep B = 0, the base model's numbers (an adapter trained on Gemma 3's text-only class put on the
    vision-language class that 4B and up load as: other module names)."""
    from peft import PeftModel

    from .heads import peft_config

    first, path = items[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_peft():  # its filter, put in front of "always"
            model = PeftModel.from_pretrained(model, path, first, is_trainable=False, config=peft_config(path))
    missing = {first: []}
    for w in caught:  # from_pretrained returns no load result, so it warns: "Found missing adapter keys ..."
        if "missing adapter keys" in str(w.message):
            missing[first] = re.findall(r"'([^']+)'", str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    with quiet_peft():
        for n, a in items[1:]:
            model.add_adapter(n, peft_config(a))
            missing[n] = model.load_adapter(a, adapter_name=n, is_trainable=False).missing_keys
    cls, folders = type(model.get_base_model()).__name__, dict(items)
    for n, keys in missing.items():
        keys = [k for k in keys if f".{n}." in k]  # peft finds a name anywhere in a key ("y" in "layers")
        if keys:
            why = f"{len(keys)} LoRA weights {cls} makes for it are not in its file (the first: {keys[0]})"
            raise ConfigError("adapter", f"{folders[n]}: {why}; it was trained on another model or model class")
    model.set_adapter(first)
    return model


def _set_fast_paths(model, cpu: bool, enabled: bool, quantised: bool) -> None:
    """The model's fast paths (infer/fast/): checked on their probe, and on a CPU the weights' layouts and
    glibc's heap."""
    from .infer import fast

    kept_4bit = 0
    if cpu and enabled and quantised:
        from .infer.fast.packed import keep_4bit_layout

        kept_4bit = keep_4bit_layout(model)  # 4-bit weights as training laid them out, before the probe's forward
    paths = fast.set_paths(model, fast.inspect(model, enabled=enabled))
    paths.kept_4bit = kept_4bit
    if cpu and enabled:
        from .infer.fast.heap import keep_heap
        from .infer.fast.packed import pack_linears

        paths.heap = keep_heap()  # activation buffers reused, not page-faulted again every layer
        if not quantised:
            paths.packed = pack_linears(model)  # bf16 weights in oneDNN's layout once; a no-op in fp32


@contextmanager
def quiet_peft():
    """peft reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning in transformers
    5.x) on every wrap: the two libraries' business, not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def load_config(path: Path):
    """The transformers config of a local model folder; an architecture transformers does not know is
    a ConfigError naming the model and its model_type."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except (ValueError, KeyError) as exc:
        raise ConfigError("model", f"{path}: transformers cannot load this architecture ({exc})") from None


def pretrained(path, **kwargs):
    """AutoModelForCausalLM.from_pretrained(path, **kwargs), where a checkpoint that needs a package this
    environment lacks (AWQ or GPTQ weights without gptqmodel, and the like) is a ConfigError naming the
    model and the package: transformers raises that ImportError before it reads any weight.

    Without the Hub's kernels (`use_kernels=False`): transformers 5.25 installs `kernels` and kernelizes
    every model it loads by default, which fetches layer code from the Hub (no internet on Kaggle) and,
    on each switch between train() and eval(), puts every decorated layer's own forward back (RMSNorm,
    rotary embeddings): the kit's training norms (train/fast.py) were silently undone at the loop's first
    model.train(), keeping autograd's fp32 copies (SmolLM2, 4 x 512 tokens: +0.56 GB for backward)."""
    from transformers import AutoModelForCausalLM

    kwargs.setdefault("use_kernels", False)
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except ImportError as exc:
        raise ConfigError("model", f"{path}: {exc}") from None


def attention_implementation(config, device: str, fast_paths: bool = True, dtype: str | None = None) -> str:
    """The attention a model runs: on a CPU the kit's blocked attention (infer/fast/attention.py, which
    also applies Gemma 2's soft cap), except in bf16 on an AMX CPU, where torch's flash kernel is faster
    (SmolLM2, 40 Science Exam rows: 5.1 s against 7.0; LMSYS's 270-2,000-token rows: 8.3 against 13.9):
    there the kit hands a long row's queries to it a block at a time (`kit_cpu_sliced`); else SDPA; eager
    where scores are soft-capped, since transformers' SDPA refuses a cap (and older versions silently
    dropped it). Another model whose class has no SDPA (gpt-oss's attention sinks) runs eager everywhere:
    the kit's attention hands what it does not cover (sinks among it) to SDPA."""
    from .hardware import cpu_has_amx
    from .infer.fast import attention
    from .infer.fast.probe import plain_attention, sdpa_supported, softcapped

    if device == "cpu" and fast_paths and (softcapped(config) or sdpa_supported(config)):
        return attention.register(sliced=dtype == "bfloat16" and cpu_has_amx() and not softcapped(config))
    return plain_attention(config)


def device_map(profile) -> dict:
    """from_pretrained's device_map argument: this process's own GPU by index (accelerate refuses a
    4-bit model whose map names no cuda:N under `accelerate launch`); none on a CPU (loaded there)."""
    if profile.device != "cuda":
        return {}
    import torch

    return {"device_map": {"": torch.cuda.current_device()}}


def merge_adapter(
    adapter: str | os.PathLike, out: str | os.PathLike, model: str | None = None, dtype: str = "float16"
) -> Path:
    """Merge a LoRA adapter into an unquantised copy of its base model and save it (for serving or vLLM).

    Merging into a 4-bit model changes its outputs; this loads the base in `dtype` instead.
    """
    import torch
    from peft import PeftModel

    base = resolve_model(model or adapter_base(adapter) or DEMO)
    tok = load_tokenizer(base)
    plain = pretrained(base, dtype=getattr(torch, dtype), local_files_only=True)
    with quiet_peft():
        merged = PeftModel.from_pretrained(plain, check_adapter(Path(adapter))).merge_and_unload()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    return replace_folder(tmp, out)


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
    paths = [check_adapter(Path(a)) for a in adapters]
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
    return replace_folder(tmp, out)


def _norm_cfg(value):
    return sorted(value) if isinstance(value, list) else value
