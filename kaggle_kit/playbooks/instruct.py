"""Instruction tuning evaluated by perplexity (the NTU ADL homework): alpaca records in, the mean per-example
perplexity of each reference output out, zero-shot, few-shot (examples balanced over a category) or
with a trained adapter."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from ..errors import ConfigError
from ..templates import render

log = logging.getLogger("kaggle_kit")


@dataclass
class PerplexityResult:
    """The NTU ADL homework's metric and what it was computed on."""

    perplexity: float  # mean over examples of exp(mean NLL of the output tokens)
    rows: int
    scored: int  # rows the budget reached
    shots: int
    seconds: float


def pick_shots(records: list[dict], k: int, category: str | None = None, exclude=(), seed: int = 0) -> list[dict]:
    """k solved records; with `category` (a record field), taken from each category value in turn, so
    no kind of instruction dominates the examples (the NTU ADL homework found imbalanced shots hurt)."""
    excluded = {r.get("id", r["instruction"]) for r in exclude} | {r["instruction"] for r in exclude}
    pool = [r for r in records if r.get("id", r["instruction"]) not in excluded and r["instruction"] not in excluded]
    rng = random.Random(seed)
    if not category:
        return rng.sample(pool, min(k, len(pool)))
    missing = [i for i, r in enumerate(pool, 1) if category not in r]
    if missing:
        raise ConfigError("shots_category", f"field {category!r} missing from record {missing[0]} of the shots file")
    groups: dict[str, list[dict]] = {}
    for r in pool:
        groups.setdefault(str(r[category]), []).append(r)
    for g in groups.values():
        rng.shuffle(g)
    order = sorted(groups)
    taken, i = [], 0
    while len(taken) < k and any(groups.values()):
        g = groups[order[i % len(order)]]
        if g:
            taken.append(g.pop())
        i += 1
    return taken


def prompts(tokenizer, records: list[dict], shots: list[dict] = ()) -> list[str]:
    """Chat prompts for alpaca records, the solved `shots` before each instruction."""

    def user(r):
        return r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")

    lead = "".join(f"Example:\n{user(s)}\nAnswer: {s['output']}\n\n" for s in shots)
    return [render(tokenizer, (lead + "Now this one:\n" if shots else "") + user(r)) for r in records]


def evaluate(cfg) -> PerplexityResult:
    """The NTU ADL homework's evaluation of cfg.data (alpaca JSON/JSONL with outputs) as the config says."""
    from ..budget import Deadline
    from ..hardware import detect
    from ..infer import perplexity
    from ..metrics import perplexity as ppl_metric
    from ..models import load_model
    from ..train.data import read_alpaca

    deadline = Deadline.parse(cfg.budget)
    records = read_alpaca(cfg.data)
    shots = []
    if cfg.shots:
        shots = pick_shots(read_alpaca(cfg.shots_file), cfg.shots, cfg.shots_category, records, cfg.seed)
    profile = detect(cfg.dtype, cfg.device)
    model, tok = load_model(cfg.model, profile, cfg.adapter, cfg.quant)
    nlls, stats = perplexity(
        model,
        tok,
        prompts(tok, records, shots),
        [r["output"] for r in records],
        max_length=cfg.max_length,
        deadline=deadline,
        progress=cfg.progress,
        batch_tokens=cfg.batch_tokens,
    )
    done = [x for x in nlls if x is not None]
    if not done:
        raise ConfigError("budget", "no example was scored within the budget")
    res = PerplexityResult(ppl_metric(done), len(records), len(done), len(shots), deadline.elapsed())
    log.info("perplexity %.3f on %d of %d examples (%d shots)", res.perplexity, res.scored, res.rows, res.shots)
    return res
