"""One function per job, called the same way from notebooks, the CLI and tests."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import competitions
from .budget import Deadline
from .config import PredictConfig, ScoreConfig, ValidateConfig
from .errors import InputError
from .io import write_csv_atomic

log = logging.getLogger("kaggle_kit")


@dataclass
class PredictResult:
    """What a prediction run produced."""

    submission: Path
    rows: int
    predicted: int
    fallback: int
    seconds: float
    rows_per_s: float
    model_seconds: float = 0.0
    stats: dict = field(default_factory=dict)


def predict(cfg: PredictConfig) -> PredictResult:
    """Read and check the test file, write a complete fallback submission, then predict and replace it.

    Rows the budget does not reach keep the competition's fallback row, so the output is always valid.
    """
    deadline = Deadline.parse(cfg.budget)
    comp = competitions.get(cfg.competition)
    df = comp.read(cfg.data)  # every cell checked before any model loads
    ids = df["id"].tolist()
    out = write_csv_atomic(comp.fallback(ids), cfg.out)
    log.info("%s: %d rows read; fallback submission written to %s", comp.name, len(df), out)

    from .hardware import detect
    from .infer import generate, score_choices
    from .models import load_model

    t0 = time.perf_counter()
    profile = detect(cfg.dtype, cfg.device)
    model, tok = load_model(cfg.model, profile, cfg.adapter)
    model_seconds = time.perf_counter() - t0
    prompts = comp.examples(df, tok, cfg.max_length)
    common = dict(max_length=cfg.max_length, batch_tokens=cfg.batch_tokens or profile.batch_tokens,
                  deadline=deadline, progress=cfg.progress)
    if comp.task == "choices":
        outputs, stats = score_choices(model, tok, prompts, list(comp.labels), temperature=cfg.temperature, **common)
    else:
        outputs, stats = generate(model, tok, prompts, max_new_tokens=cfg.max_new_tokens or comp.max_new_tokens,
                                  stop=list(comp.stop), **common)
    write_csv_atomic(comp.to_submission(df, outputs), out)
    result = PredictResult(out, len(df), stats.rows_done, len(df) - stats.rows_done, deadline.elapsed(),
                           stats.rows_per_s, model_seconds, vars(stats))
    log.info("%s: %d predicted, %d fallback, %.1f rows/s, %.1fs", comp.name, result.predicted, result.fallback,
             result.rows_per_s, result.seconds)
    return result


def score(cfg: ScoreConfig) -> float:
    """The competition metric of a submission against a labelled file."""
    import pandas as pd

    comp = competitions.get(cfg.competition)
    truth = comp.read(cfg.truth, labelled=True)
    problems = competitions.check_submission(comp, cfg.submission, truth["id"].tolist())
    if problems:
        raise InputError(cfg.submission, "invalid submission: " + "; ".join(problems[:5]))
    sub = pd.read_csv(cfg.submission, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    kw = {}
    if comp.name == "prompt_recovery":
        from .embed import load_embedder

        kw["embed"] = load_embedder(cfg.embedder)
    return comp.score(sub, truth, **kw)


def validate(cfg: ValidateConfig) -> list[str]:
    """Every problem with a submission; an empty list means it is valid."""
    comp = competitions.get(cfg.competition)
    ids = comp.read(cfg.test)["id"].tolist() if cfg.test else None
    if not Path(cfg.submission).is_file():
        raise InputError(cfg.submission, "file not found")
    return competitions.check_submission(comp, cfg.submission, ids)
