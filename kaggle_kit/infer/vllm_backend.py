"""The optional vLLM backend: the same Tasks (choice scoring, generation) run by vLLM's engine, so the
kit's planner, checkpoints, deadline, shards and submissions work unchanged. Used with
`predict --backend vllm` (or `auto`: vLLM when it is installed and a GPU is present). vLLM's tensor
parallelism (`--tensor-parallel N`) serves models larger than one GPU.

vLLM itself does not run in this project's CI (no GPU); the kit's side of it does, end to end through
`predict`, against a stand-in for vLLM's offline `LLM` API that computes with the real demo model
(tests/integration/test_vllm_standin.py: the transformers backend's submissions), and its settings against
a recording stand-in (tests/unit/test_cuda_paths.py). Written against vLLM 0.8.5-0.11's offline API.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, KitError
from ..heads import saved_classes
from .engine import encode
from .primitives import MAX_LENGTH, Task, label_token_ids, probs_from_results

log = logging.getLogger("kaggle_kit")
BATCH_TOKENS = 262144  # tokens handed to vLLM per step: it schedules its own batches inside
MIN_CAPABILITY = (7, 0)  # vLLM's CUDA kernels start at Volta: a P100 (sm_60) is refused
QUANT = {"nf4": "bitsandbytes", "none": None}  # the kit's --quant -> vLLM's in-flight quantisation
# vLLM's LoRAConfig.max_lora_rank takes one of these: the engine sizes its LoRA buffers (and the punica
# kernels their shapes) for it, so it is the adapter's rank rounded up, not the largest
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# vLLM's V1 engine does not run below compute capability 8.0 (a T4 is sm_75); its V0 engine, chosen with
# VLLM_USE_V1=0, does, and was removed after this release.
V0_LAST = (0, 10, 2)
# The first vLLM with `logprobs_mode`. Choice scoring reads the labels' log-probabilities after
# allowed_token_ids has masked the rest (then every label is among the top len(labels)); V1 engines
# before it return the raw ones, whose top tokens need not hold the labels, so those releases run V0,
# whose log-probabilities are the processed ones.
LOGPROBS_MODE = (0, 10, 1)
GEN_ROOM = 512  # tokens past the prompt vLLM's context holds at least (label scoring needs one)
MAX_LABELS = 256  # vLLM's max_logprobs (its default, 20, refuses MAP's ~65 labels at the first request)


def available() -> bool:
    """vLLM importable and a CUDA GPU it supports present (compute capability 7.0 or newer)."""
    return why_not() is None


def installed() -> bool:
    """Whether the vllm package is importable."""
    return importlib.util.find_spec("vllm") is not None


def why_not() -> str | None:
    """Why vLLM cannot run here, or None."""
    if not installed():
        return "the vllm package is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU"
    cap = torch.cuda.get_device_capability(0)
    if cap < MIN_CAPABILITY:
        return (
            f"vLLM needs compute capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}+, this GPU is sm_{cap[0]}{cap[1]}"
        )
    version = _version()
    if cap < (8, 0) and version > V0_LAST:
        last = ".".join(map(str, V0_LAST))
        return (
            f"vLLM {'.'.join(map(str, version))} has only its V1 engine, which does not run on sm_{cap[0]}{cap[1]} "
            f"(T4); vLLM <= {last} runs its V0 engine there (`kaggle-kit wheels --with vllm` says which fits)"
        )
    return None


def _version() -> tuple[int, ...]:
    """The installed vLLM's release as numbers (0.10.2 -> (0, 10, 2); a dev or post suffix dropped)."""
    import re

    import vllm

    return tuple(int(n) for n in re.findall(r"\d+", str(getattr(vllm, "__version__", "0")).split("+")[0])[:3])


def check(model_type: str, profile, quant: str | None) -> str | None:
    """Why vLLM cannot run this model as configured, or None: Gemma 2/3 in fp16 (vLLM refuses; they
    overflow it) and 8-bit weights (no in-flight 8-bit in vLLM)."""
    from ..hardware import FP16_OVERFLOWS

    if model_type in FP16_OVERFLOWS and profile.dtype == "float16":
        return f"vLLM refuses {model_type} in float16 (it overflows), and this GPU has no bf16"
    if (quant or "none") not in QUANT:
        return f"vLLM has no in-flight {quant} quantisation; use --quant nf4 (bitsandbytes) or none"
    return None


def adapter_problem(adapter, config=None) -> str | None:
    """Why vLLM cannot run the LoRA adapter folder `adapter` as transformers + peft would, or None. vLLM
    refuses some of these only at the first request, after the model has loaded (DoRA, weights saved whole,
    a bias, a rank above its maximum), and silently drops others, computing other numbers (peft's
    per-module ranks and alphas: vLLM scales every module by lora_alpha / r; LoRA weights of modules the
    model lacks, when `config`, the base model's, is given: see unplaced_lora)."""
    if saved_classes(adapter):
        return "it has a classification head, which vLLM does not run"
    cfg = _adapter_config(adapter)
    why = []
    if cfg.get("peft_type", "LORA") != "LORA":
        why.append(f"it is a {cfg['peft_type']} adapter (vLLM runs LoRA only)")
    if cfg.get("use_dora"):
        why.append("it is a DoRA adapter")
    if cfg.get("modules_to_save"):
        why.append(f"it saves {', '.join(cfg['modules_to_save'])} whole, and vLLM applies LoRA matrices only")
    if cfg.get("bias", "none") != "none":
        why.append(f"it trains biases (bias: {cfg['bias']})")
    patterns = [k for k in ("rank_pattern", "alpha_pattern") if cfg.get(k)]
    if patterns:
        why.append(f"its per-module {' and '.join(patterns)} would be dropped (vLLM scales every module alike)")
    if int(cfg.get("r", 0)) > LORA_RANKS[-1]:
        why.append(f"its rank {cfg['r']} is above vLLM's largest, {LORA_RANKS[-1]}")
    unplaced = unplaced_lora(adapter, config) if config is not None else []
    if unplaced:
        why.append(
            f"{len(unplaced)} of its LoRA modules are not in the base model (the first: {unplaced[0]}); "
            "it was trained on another model or model class"
        )
    return "; ".join(why) or None


def unplaced_lora(adapter, config) -> list[str]:
    """The modules `adapter`'s LoRA weights name that the transformers class of `config` has not. vLLM
    finds no place for those and runs the base model's numbers there without a word (peft at least warns,
    and the transformers path makes that an error: models._load_adapters). The class is built on the meta
    device: module names only, no weights, no memory."""
    import re
    from pathlib import Path

    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    weights = Path(adapter) / "adapter_model.safetensors"
    if not weights.is_file():  # a .bin adapter: not read here
        return []
    with safe_open(str(weights), "pt") as f:
        keys = list(f.keys())
    named = {re.sub(r"^base_model\.model\.", "", k.split(".lora_")[0]) for k in keys if ".lora_" in k}
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, ImportError, KeyError, TypeError, RuntimeError, AttributeError) as exc:
        log.info(
            "vLLM: the adapter's modules are not checked (transformers cannot build %s: %s)", config.model_type, exc
        )
        return []  # a class transformers does not build (remote code): vLLM's own loader decides
    have = {name for name, _ in model.named_modules()}
    return sorted(named - have)


def lora_rank(adapter) -> int:
    """vLLM's max_lora_rank for `adapter`: its rank, rounded up to one vLLM takes."""
    r = int(_adapter_config(adapter).get("r", 8))
    return next((n for n in LORA_RANKS if n >= r), LORA_RANKS[-1])


def _adapter_config(adapter) -> dict:
    """The adapter folder's adapter_config.json as peft wrote it."""
    import json
    from pathlib import Path

    return json.loads((Path(adapter) / "adapter_config.json").read_text())


@dataclass
class VllmModel:
    """A vLLM engine plus the LoRA request every call carries (None = the base model)."""

    llm: object
    lora: object = None
    name_or_path: str = ""


def model_len(max_length: int, max_new_tokens: int | None = None, positions: int | None = None) -> int:
    """vLLM's max_model_len: a prompt of `max_length` tokens and what is generated after it (at least
    GEN_ROOM), within the model's `positions` (vLLM refuses more). vLLM ends a generation at this length
    without an error, so a cap below the requested tokens is said in the log."""
    room = max(GEN_ROOM, max_new_tokens or 0)
    if positions and max_length + room > positions:
        log.warning(
            "vLLM: %d prompt + %d new tokens exceed the model's %d positions; generations stop at %d tokens",
            max_length, room, positions, positions,
        )  # fmt: skip
        return positions
    return max_length + room


def load(
    path,
    profile,
    adapter=None,
    max_length: int = MAX_LENGTH,
    tensor_parallel: int = 1,
    quant: str | None = None,
    max_new_tokens: int | None = None,
    positions: int | None = None,
) -> VllmModel:
    """A vLLM engine over a local model folder; a LoRA adapter is applied per request, unmerged. `quant`
    'nf4' quantises the weights in flight (bitsandbytes): a 9B model in fp16 (18 GB) does not fit a T4.
    Its context holds `max_length` prompt tokens and `max_new_tokens` after them (model_len)."""
    reason = why_not()
    if reason:
        raise ConfigError("backend", f"vllm cannot run here: {reason}; use --backend transformers")
    problem = adapter and adapter_problem(adapter)
    if problem:
        raise ConfigError("backend", f"vLLM cannot run {adapter}: {problem}; --backend transformers")
    kw = {"enable_lora": True, "max_lora_rank": lora_rank(adapter)} if adapter else {}
    masked_logprobs = _version() >= LOGPROBS_MODE
    if masked_logprobs:
        kw["logprobs_mode"] = "processed_logprobs"  # log-probs after the label whitelist: over the labels
    if not masked_logprobs or (profile.capability is not None and profile.capability < (8, 0)):
        os.environ["VLLM_USE_V1"] = "0"  # V0: runs on a T4, and processes log-probs (why_not refused V1-only)
    from vllm import LLM

    if QUANT.get(quant or "none"):
        kw["quantization"] = QUANT[quant]
    llm = LLM(
        model=str(path),
        dtype="half" if profile.dtype == "float16" else profile.dtype,  # T4: half (no bf16 there)
        tensor_parallel_size=tensor_parallel,
        max_model_len=model_len(max_length, max_new_tokens, positions),
        max_logprobs=MAX_LABELS,
        enforce_eager=profile.capability is not None and profile.capability < (8, 0),  # no CUDA graphs on T4
        **kw,
    )
    lora = None
    if adapter:
        from vllm.lora.request import LoRARequest

        lora = LoRARequest("adapter", 1, str(adapter))
    return VllmModel(llm, lora, str(path))


def _prompts(rows):
    return [{"prompt_token_ids": list(r)} for r in rows]


def choice_task(
    model: VllmModel, tokenizer, prompts, labels, *, temperature=1.0, max_length=MAX_LENGTH, views=None, masks=None, **_
):
    """As primitives.choice_task: probabilities over `labels` at the next token (a row's False labels in
    `masks` get 0), views averaged (one perm for all rows, or one per row, None: the row sits it out)."""
    from vllm import SamplingParams

    label_ids = label_token_ids(tokenizer, labels, prompts + [p for v, _ in views or [] for p in v])
    if len(label_ids) > MAX_LABELS:
        raise ConfigError(
            "backend", f"{len(label_ids)} labels, vLLM returns at most {MAX_LABELS}; --backend transformers"
        )
    params = SamplingParams(max_tokens=1, temperature=0.0, allowed_token_ids=label_ids, logprobs=len(label_ids))
    ids = encode(tokenizer, prompts, max_length)
    extra = [(encode(tokenizer, p, max_length), list(perm)) for p, perm in views or []]

    allowed = None if masks is None else np.asarray(masks, dtype=bool)

    def score(batch, rows):
        outs = model.llm.generate(_prompts(rows), params, lora_request=model.lora, use_tqdm=False)
        logp = np.array([label_logprobs(o.outputs[0].logprobs[0], label_ids) for o in outs], dtype=np.float64)
        z = logp / temperature  # log-softmax over labels = logits - const: dividing by T re-tempers them
        if allowed is not None:
            z = np.where(allowed[batch], z, -np.inf)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    def step(batch, pad_as=None):  # vLLM pads nothing: pad_as has no meaning here
        probs = score(batch, [ids[i] for i in batch])
        counted = np.ones((len(batch), 1))
        for view_ids, perm in extra:
            shown, back = score(batch, [view_ids[i] for i in batch]), np.zeros_like(probs)
            for j, i in enumerate(batch):
                row_perm = perm if perm and isinstance(perm[0], int) else perm[i]
                if row_perm is not None:
                    back[j, row_perm] = shown[j]
                    counted[j] += 1
            probs = probs + back
        return list(probs / counted)

    settings = {"labels": labels, "temperature": temperature, "views": [p for _, p in extra], "backend": "vllm"}
    return Task("score", ids, step, lambda results: probs_from_results(results, len(labels)), settings)


def label_logprobs(top: dict, label_ids: list[int]) -> list[float]:
    """Each label's log-probability from one position's returned top tokens ({token id: Logprob}); a
    KitError naming what vLLM returned instead when a label is missing (raw, unmasked log-probs)."""
    missing = [t for t in label_ids if t not in top]
    if missing:
        raise KitError(
            f"vLLM returned no log-probability for label tokens {missing} (it returned {sorted(top)[:8]}): "
            "its log-probs were taken before allowed_token_ids; --backend transformers scores the labels"
        )
    return [top[t].logprob for t in label_ids]


def generation_task(
    model: VllmModel,
    tokenizer,
    prompts,
    *,
    max_new_tokens=32,
    stop=None,
    max_length=MAX_LENGTH,
    samples=1,
    temperature=0.7,
    top_p=0.95,
    seed=0,
    **_,
):
    """As primitives.generation_task: greedy continuations cut at the first stop string; with `samples`
    > 1 that many sampled ones per row (seeded per batch), a row's output their list."""
    from vllm import SamplingParams

    ids = encode(tokenizer, prompts, max_length)
    common = dict(max_tokens=max_new_tokens, stop=list(stop or []))

    def step(batch, pad_as=None):
        if samples > 1:
            params = SamplingParams(
                n=samples, temperature=temperature, top_p=top_p, seed=seed * 1_000_003 + min(batch), **common
            )
        else:
            params = SamplingParams(temperature=0.0, **common)
        outs = model.llm.generate(_prompts([ids[i] for i in batch]), params, lora_request=model.lora, use_tqdm=False)
        texts = [[c.text.strip() for c in o.outputs] for o in outs]
        return [t[0] for t in texts] if samples == 1 else texts

    settings = {"max_new_tokens": max_new_tokens, "stop": list(stop or []), "backend": "vllm", "samples": samples}
    task = Task("generate", ids, step, list, settings, extra_tokens=max_new_tokens)
    task.copies = samples
    return task
