"""Synthetic training data from a local LLM, in a competition's train-file columns so `kaggle-kit train`
takes it as it is:

- rewrites (Prompt Recovery): original texts rewritten under known rewrite prompts, as a Prompt Recovery
  write-up planned with Gemma;
- essays (LLM-Detect): essays written to the assignment prompts of train_prompts.csv, sampled so that the
  essays of one prompt differ: the generated positives the official train set lacks (3 in 1,378).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..templates import render

log = logging.getLogger("kaggle_kit")


@dataclass
class SynthResult:
    """What a synthetic-data run wrote."""

    out: Path
    rows: int  # triples written
    requested: int
    dropped: int  # empty generations or rows the budget did not reach
    seconds: float


def read_prompts(path, column: str = "rewrite_prompt") -> list[str]:
    """Rewrite prompts from a text file (one per line) or a CSV column; blanks and repeats dropped."""
    from ..io import Column, read_csv

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "prompt file not found")
    if path.suffix == ".csv":
        lines = read_csv(path, [Column(column)], id_column="")[column].tolist()
    else:
        lines = path.read_text(encoding="utf-8").splitlines()
    prompts = list(dict.fromkeys(x.strip() for x in lines if x.strip()))
    if not prompts:
        raise InputError(path, "no rewrite prompts")
    return prompts


def pairs(n_texts: int, n_prompts: int, per_text: int, seed: int) -> list[tuple[int, int]]:
    """(text, prompt) index pairs: each text under `per_text` different prompts drawn with a seed."""
    rng = random.Random(seed)
    k = min(per_text, n_prompts)
    return [(t, p) for t in range(n_texts) for p in rng.sample(range(n_prompts), k)]


def request(tokenizer, prompt: str, text: str) -> str:
    """The chat prompt asking the model to rewrite `text` as `prompt` says."""
    return render(tokenizer, f"{prompt}\n\nText:\n{text}\n\nReply with the rewritten text only.")


def essay_request(tokenizer, row: dict) -> str:
    """The chat prompt asking for a student's essay on an assignment of train_prompts.csv."""
    source = str(row.get("source_text", ""))[:1200]
    text = f"Assignment: {row['instructions']}\n\nSources:\n{source}\n\nWrite the essay, about 300 words."
    return render(tokenizer, text)


def essays(cfg, model, tok, deadline) -> tuple[list[dict], int]:
    """(rows id, prompt_id, text, generated=1 of the essays written, essays asked for)."""
    from ..infer import run_task
    from ..infer.primitives import generation_task
    from ..io import Column, read_csv

    rows = read_csv(cfg.prompts, [Column("prompt_id", "id"), Column("instructions")], id_column="prompt_id")
    rows = rows.to_dict("records")[: cfg.rows or None]
    task = generation_task(
        model, tok, [essay_request(tok, r) for r in rows], max_new_tokens=cfg.max_new_tokens,
        max_length=cfg.max_length, samples=cfg.per_text, temperature=cfg.temperature, seed=cfg.seed,
    )  # fmt: skip
    outputs, _ = run_task(task, model, deadline=deadline, progress=cfg.progress, checkpoint=f"{cfg.out}.ckpt.jsonl")
    out = []
    for r, texts in zip(rows, outputs):
        for k, text in enumerate(texts or []):
            if text and text.strip():
                out.append(
                    {
                        "id": f"synth-{r['prompt_id']}-{k}",
                        "prompt_id": r["prompt_id"],
                        "text": text.strip(),
                        "generated": 1,
                    }
                )
    return out, len(rows) * cfg.per_text


def synthesize(cfg) -> SynthResult:
    """Write cfg.out: id, original_text, rewrite_prompt, rewritten_text for every (text, prompt) pair the
    budget reaches. Resumable: a rerun after a kill continues from the checkpoint file."""
    import pandas as pd

    from ..budget import Deadline
    from ..hardware import detect
    from ..infer import run_task
    from ..infer.primitives import generation_task
    from ..io import Column, read_csv, write_csv_atomic
    from ..models import load_model

    deadline = Deadline.parse(cfg.budget)
    if cfg.kind == "essays":
        model, tok = load_model(cfg.model, detect(cfg.dtype, cfg.device), cfg.adapter)
        rows, requested = essays(cfg, model, tok, deadline)
        write_csv_atomic(pd.DataFrame(rows, columns=["id", "prompt_id", "text", "generated"]), cfg.out)
        return _done(cfg, len(rows), requested, deadline)
    texts = read_csv(cfg.texts, [Column(cfg.text_column)], id_column="")[cfg.text_column].tolist()
    texts = [t[: cfg.max_text_chars] for t in texts[: cfg.rows or None]]
    prompts = read_prompts(cfg.prompts, cfg.prompt_column)
    todo = pairs(len(texts), len(prompts), cfg.per_text, cfg.seed)
    profile = detect(cfg.dtype, cfg.device)
    model, tok = load_model(cfg.model, profile, cfg.adapter)
    requests = [request(tok, prompts[p], texts[t]) for t, p in todo]
    task = generation_task(model, tok, requests, max_new_tokens=cfg.max_new_tokens, max_length=cfg.max_length)
    outputs, _ = run_task(
        task,
        model,
        deadline=deadline,
        progress=cfg.progress,
        checkpoint=f"{cfg.out}.ckpt.jsonl",
    )
    rows = [
        {"id": str(i), "original_text": texts[t], "rewrite_prompt": prompts[p], "rewritten_text": o.strip()}
        for i, ((t, p), o) in enumerate(zip(todo, outputs))
        if o and o.strip()
    ]
    write_csv_atomic(pd.DataFrame(rows, columns=["id", "original_text", "rewrite_prompt", "rewritten_text"]), cfg.out)
    return _done(cfg, len(rows), len(todo), deadline)


def _done(cfg, written: int, requested: int, deadline) -> SynthResult:
    if written == requested:
        Path(f"{cfg.out}.ckpt.jsonl").unlink(missing_ok=True)
    res = SynthResult(Path(cfg.out), written, requested, requested - written, deadline.elapsed())
    log.info("synthetic data: %d of %d %s written to %s (%.0fs)", written, requested, cfg.kind, res.out, res.seconds)
    return res
