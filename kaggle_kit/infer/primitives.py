"""score_choices, generate and perplexity: each a `step` function handed to engine.run_batches."""
from __future__ import annotations

import numpy as np

from ..budget import Deadline
from ..errors import ConfigError
from .engine import RunStats, encode, left_pad, run_batches

MAX_LENGTH = 2048


def default_batch_tokens(model) -> int:
    """16k padded tokens a batch on a GPU (T4 + 9B 4-bit: activations ~2-3 GB); 2k on a CPU, where big
    batches fall out of cache (SmolLM2 on 2 cores: 233 tok/s at 16k, 551 at 2k)."""
    return 16384 if model.device.type == "cuda" else 2048


def label_token_ids(tokenizer, labels: list[str]) -> list[int]:
    """The single token id of each label as the model would write it first (e.g. 'A' after 'assistant\\n')."""
    ids = []
    for label in labels:
        toks = tokenizer.encode(label, add_special_tokens=False)
        if len(toks) != 1:
            raise ConfigError("labels", f"label {label!r} is {len(toks)} tokens for this tokenizer; need 1")
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        raise ConfigError("labels", f"labels {labels} share a token id")
    return ids


def score_choices(model, tokenizer, prompts: list[str], labels: list[str], *, temperature: float = 1.0,
                  max_length: int = MAX_LENGTH, batch_tokens: int | None = None,
                  deadline: Deadline | None = None, progress: bool = True) -> tuple[np.ndarray, RunStats]:
    """Probabilities over `labels` for the next token after each prompt: (N, K) array, NaN rows not reached.

    Only the last position's logits are computed (logits_to_keep=1); temperature divides the label logits.
    """
    import torch

    if temperature <= 0:
        raise ConfigError("temperature", f"must be > 0, got {temperature}")
    label_ids = torch.tensor(label_token_ids(tokenizer, labels))
    ids = encode(tokenizer, prompts, max_length)

    @torch.inference_mode()
    def step(batch):
        input_ids, mask, pos = left_pad([ids[i] for i in batch], tokenizer.pad_token_id, model.device)
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=pos, logits_to_keep=1,
                       use_cache=False).logits[:, -1, :]
        chosen = logits.float()[:, label_ids.to(logits.device)] / temperature
        return list(torch.softmax(chosen, dim=-1).cpu().numpy())

    results, stats = run_batches(ids, step, batch_tokens=batch_tokens or default_batch_tokens(model), deadline=deadline, desc="score",
                                 progress=progress)
    probs = np.full((len(prompts), len(labels)), np.nan)
    for i, r in enumerate(results):
        if r is not None:
            probs[i] = r
    return probs, stats


def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 32, stop: list[str] | None = None,
             max_length: int = MAX_LENGTH, batch_tokens: int | None = None, deadline: Deadline | None = None,
             progress: bool = True) -> tuple[list[str | None], RunStats]:
    """Greedy continuations (KV cache, stop at EOS, then cut at the first stop string); None if not reached."""
    import torch

    ids = encode(tokenizer, prompts, max_length)
    stop = stop or []

    @torch.inference_mode()
    def step(batch):
        input_ids, mask, _ = left_pad([ids[i] for i in batch], tokenizer.pad_token_id, model.device)
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        texts = tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)
        return [_cut(t, stop) for t in texts]

    return run_batches(ids, step, batch_tokens=batch_tokens or default_batch_tokens(model), deadline=deadline, desc="generate",
                       progress=progress, extra_tokens=max_new_tokens)


def _cut(text: str, stop: list[str]) -> str:
    for s in stop:
        at = text.find(s)
        if at >= 0:
            text = text[:at]
    return text.strip()


def perplexity(model, tokenizer, prompts: list[str], outputs: list[str], *, max_length: int = MAX_LENGTH,
               batch_tokens: int | None = None, deadline: Deadline | None = None,
               progress: bool = True) -> tuple[list[np.ndarray | None], RunStats]:
    """Per example, the NLL of each output token given prompt + earlier output tokens (seed 003)."""
    import torch

    prompt_ids = encode(tokenizer, prompts, max_length)
    out_ids = [tokenizer(o, add_special_tokens=False)["input_ids"] for o in outputs]
    rows, n_out = [], []
    for p, o in zip(prompt_ids, out_ids):
        if not o:
            raise ConfigError("outputs", "an output is empty; perplexity needs at least one token")
        o = o[:max_length - 1]
        rows.append((p + o)[-max_length:])
        n_out.append(len(o))

    @torch.inference_mode()
    def step(batch):
        input_ids, mask, pos = left_pad([rows[i] for i in batch], tokenizer.pad_token_id, model.device)
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        nll = -logp.gather(-1, input_ids[:, 1:, None])[..., 0]
        return [nll[j, -n_out[i]:].cpu().numpy() for j, i in enumerate(batch)]

    return run_batches(rows, step, batch_tokens=batch_tokens or default_batch_tokens(model), deadline=deadline, desc="perplexity",
                       progress=progress)
