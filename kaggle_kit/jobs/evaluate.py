"""score, validate and the mean-prompt search: jobs on files, with no model to load (but an embedder)."""

from __future__ import annotations

from pathlib import Path

from .. import competitions
from ..config import ScoreConfig, ValidateConfig
from ..errors import InputError
from ..io import read_submission


def score(cfg: ScoreConfig) -> float:
    """The competition metric of a submission against a labelled file."""
    comp = competitions.get(cfg.competition)
    truth = comp.read(cfg.truth, labelled=True)
    # the format and each row; ids the truth lacks are not scored (Eedi's untagged wrong answers), and
    # ids the submission lacks are an error (comp.aligned)
    problems = competitions.check_submission(comp, cfg.submission)
    if problems:
        raise InputError(cfg.submission, "invalid submission: " + "; ".join(problems[:5]))
    sub = read_submission(cfg.submission)
    kw = {}
    if comp.spec.metric == "scs":
        from ..embed import scorer

        kw["embed"] = scorer(cfg.embedder, cfg.scs_max_tokens, cfg.scs_special_tokens_as_text)
    try:
        return comp.score(sub, truth, **kw)
    except ValueError as exc:  # a metric undefined on these rows: ROC AUC over one class
        raise InputError(cfg.truth, f"{comp.metric} cannot be computed on these rows: {exc}") from None


def validate(cfg: ValidateConfig) -> list[str]:
    """Every problem with a submission; an empty list means it is valid."""
    comp = competitions.get(cfg.competition)
    ids = comp.read(cfg.test)[comp.id_column].tolist() if cfg.test else None
    if not Path(cfg.submission).is_file():
        raise InputError(cfg.submission, "file not found")
    return competitions.check_submission(comp, cfg.submission, ids)


def mean_prompt(cfg):
    """Search the mean prompt of the known prompts in cfg.prompts and write it to cfg.out."""
    from ..embed import scorer
    from ..io import Column, read_csv, write_text_atomic
    from ..playbooks.mean_prompt import optimize, vocabulary

    prompts = read_csv(cfg.prompts, [Column(cfg.column)], id_column="")[cfg.column].tolist()
    unique = list(dict.fromkeys(prompts))
    res = optimize(
        prompts,
        scorer(cfg.embedder, cfg.scs_max_tokens, cfg.scs_special_tokens_as_text),
        vocab=vocabulary(unique, cfg.vocab_size),
        max_words=cfg.max_words,
        restarts=cfg.restarts,
    )
    write_text_atomic(res.text + "\n", cfg.out)
    return res
