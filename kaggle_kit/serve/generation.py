"""Batched decoding with real log-probabilities, for the serving API.

One loop over the KV cache for a batch of requests that share an adapter. Each row keeps its own
temperature, top-k, seed and length, so requests batch together without changing each other's output.
Reported log-probs are the model's own (log-softmax of the raw logits at position i-1 for token i),
whatever temperature sampled the token: that is what HELM scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..infer.engine import left_pad


@dataclass
class GenRequest:
    """One sequence to continue: prompt token ids and how to sample."""

    ids: list[int]
    max_new_tokens: int = 50
    temperature: float = 0.0  # 0 = greedy
    top_k: int | None = None  # None or 0 = no top-k filter
    seed: int | None = None  # None = fresh randomness
    echo: bool = False  # also return the prompt positions' log-probs


@dataclass
class GenResult:
    """Token ids (prompt ones first when echoed) with per-token log-prob and the top token at each position."""

    prompt_ids: list[int]
    new_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # one per returned token
    top: list[tuple[int, float]] = field(default_factory=list)  # (argmax id, its log-prob) per returned token


def eos_ids(model, tokenizer) -> set[int]:
    """Token ids that end a generation: the tokenizer's EOS and the generation config's."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(gen) if isinstance(gen, list) else ({gen} if gen is not None else set())
    return ids


def _pick(logits, req: GenRequest, generator):
    """The next token for one row: argmax at temperature 0, else top-k sampling from logits / temperature."""
    import torch

    if not req.temperature:
        return int(logits.argmax())
    scaled = logits / req.temperature
    if req.top_k:
        kth = torch.topk(scaled, min(req.top_k, scaled.numel())).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def _generator(seed: int | None):
    import torch

    g = torch.Generator(device="cpu")
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def generate_batch(model, tokenizer, requests: list[GenRequest]) -> list[GenResult]:
    """Continue every request in one KV-cache loop; stops a row at EOS or its max_new_tokens."""
    import torch

    with torch.inference_mode():
        return _generate(model, tokenizer, requests)


def _generate(model, tokenizer, requests):
    import torch

    device = model.device
    stop = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, mask, pos = left_pad([r.ids for r in requests], pad, device)
    any_echo = any(r.echo for r in requests)
    # Prompt log-probs need every position's logits; otherwise only the last one (vocab x length is big).
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=0 if any_echo else 1
    )
    results = [GenResult(prompt_ids=list(r.ids)) for r in requests]
    width = ids.shape[1]
    for j, r in enumerate(requests):
        if r.echo:
            _prompt_logprobs(out.logits[j, width - len(r.ids) :].float(), r.ids, results[j])
    logits = out.logits[:, -1].float()
    past = out.past_key_values
    gens = [_generator(r.seed) if r.temperature else None for r in requests]
    done = [r.max_new_tokens <= 0 for r in requests]
    next_pos = pos[:, -1:] + 1
    for _ in range(max((r.max_new_tokens for r in requests), default=0)):
        if all(done):
            break
        logp = torch.log_softmax(logits, dim=-1)
        top_lp, top_id = logp.max(dim=-1)
        chosen = []
        for j, r in enumerate(requests):
            if done[j]:
                chosen.append(pad)
                continue
            tok = _pick(logits[j].cpu(), r, gens[j])
            res = results[j]
            res.new_ids.append(tok)
            res.logprobs.append(float(logp[j, tok]))
            res.top.append((int(top_id[j]), float(top_lp[j])))
            done[j] = tok in stop or len(res.new_ids) >= r.max_new_tokens
            chosen.append(tok)
        if all(done):
            break
        step_ids = torch.tensor(chosen, dtype=torch.long, device=device)[:, None]
        mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
        out = model(
            input_ids=step_ids, attention_mask=mask, position_ids=next_pos, past_key_values=past, use_cache=True
        )
        past, logits, next_pos = out.past_key_values, out.logits[:, -1].float(), next_pos + 1
    return results


def _prompt_logprobs(logits, prompt: list[int], res: GenResult) -> None:
    """Token i's log-prob from the distribution at position i-1; the first token has no context (0.0)."""
    import torch

    logp = torch.log_softmax(logits, dim=-1)
    top_lp, top_id = logp.max(dim=-1)
    res.logprobs.append(0.0)
    res.top.append((prompt[0], 0.0))
    for i in range(1, len(prompt)):
        res.logprobs.append(float(logp[i - 1, prompt[i]]))
        res.top.append((int(top_id[i - 1]), float(top_lp[i - 1])))
