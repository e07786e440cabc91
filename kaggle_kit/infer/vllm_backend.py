"""The optional vLLM backend: the same Tasks (choice scoring, generation) run by vLLM's engine, so the
kit's planner, checkpoints, deadline, shards and submissions work unchanged. Used with
`predict --backend vllm` (or `auto`: vLLM when it is installed and a GPU is present). vLLM's tensor
parallelism (`--tensor-parallel N`) serves models larger than one GPU.

Not exercised by this project's CI (no GPU, no vLLM); written against vLLM >= 0.10's offline `LLM` API.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .engine import encode
from .primitives import MAX_LENGTH, Task, label_token_ids, probs_from_results

log = logging.getLogger("kaggle_kit")
BATCH_TOKENS = 262144  # tokens handed to vLLM per step: it schedules its own batches inside


def available() -> bool:
    """vLLM importable and a CUDA GPU present."""
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


@dataclass
class VllmModel:
    """A vLLM engine plus the LoRA request every call carries (None = the base model)."""

    llm: object
    lora: object = None
    name_or_path: str = ""


def load(path, profile, adapter=None, max_length: int = MAX_LENGTH, tensor_parallel: int = 1) -> VllmModel:
    """A vLLM engine over a local model folder; a LoRA adapter is applied per request, unmerged."""
    if not available():
        raise ConfigError("backend", "vllm needs the vllm package and a CUDA GPU; use --backend transformers")
    from vllm import LLM

    kw = {"enable_lora": True, "max_lora_rank": 64} if adapter else {}
    llm = LLM(
        model=str(path),
        dtype=profile.dtype,  # T4: float16 (no bf16 there)
        tensor_parallel_size=tensor_parallel,
        max_model_len=max_length + 512,  # room for generated tokens
        logprobs_mode="processed_logprobs",  # log-probs after the label whitelist: a softmax over the labels
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


def choice_task(model: VllmModel, tokenizer, prompts, labels, *, temperature=1.0, max_length=MAX_LENGTH, views=None):
    """As primitives.choice_task: probabilities over `labels` at the next token, views averaged."""
    from vllm import SamplingParams

    label_ids = label_token_ids(tokenizer, labels)
    params = SamplingParams(max_tokens=1, temperature=0.0, allowed_token_ids=label_ids, logprobs=len(label_ids))
    ids = encode(tokenizer, prompts, max_length)
    extra = [(encode(tokenizer, p, max_length), list(perm)) for p, perm in views or []]

    def score(rows):
        outs = model.llm.generate(_prompts(rows), params, lora_request=model.lora, use_tqdm=False)
        logp = np.array([[o.outputs[0].logprobs[0][t].logprob for t in label_ids] for o in outs], dtype=np.float64)
        z = logp / temperature  # log-softmax over labels = logits - const: dividing by T re-tempers them
        p = np.exp(z - z.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    def step(batch, pad_as=None):  # vLLM pads nothing: pad_as has no meaning here
        probs = score([ids[i] for i in batch])
        for view_ids, perm in extra:
            back = np.empty_like(probs)
            back[:, perm] = score([view_ids[i] for i in batch])
            probs = probs + back
        return list(probs / (1 + len(extra)))

    settings = {"labels": labels, "temperature": temperature, "views": [p for _, p in extra], "backend": "vllm"}
    return Task("score", ids, step, lambda results: probs_from_results(results, len(labels)), settings)


def generation_task(model: VllmModel, tokenizer, prompts, *, max_new_tokens=32, stop=None, max_length=MAX_LENGTH):
    """As primitives.generation_task: greedy continuations cut at the first stop string."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, stop=list(stop or []))
    ids = encode(tokenizer, prompts, max_length)

    def step(batch, pad_as=None):
        outs = model.llm.generate(_prompts([ids[i] for i in batch]), params, lora_request=model.lora, use_tqdm=False)
        return [o.outputs[0].text.strip() for o in outs]

    settings = {"max_new_tokens": max_new_tokens, "stop": list(stop or []), "backend": "vllm"}
    return Task("generate", ids, step, list, settings, extra_tokens=max_new_tokens)
