"""train(cfg): a LoRA / QLoRA adapter for a competition. The job reads the competition's labelled rows,
splits them (grouped, leak-free), builds prompt/completion pairs through the competition, builds the
model and optimizer, resumes from out/last when it holds the same run, and hands everything to the
engine's fit() loop (kaggle_kit/train/loop.py), with the competition's metric as a function."""

from __future__ import annotations

import logging
import math
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import competitions
from ..budget import Deadline
from ..config import TrainConfig
from ..errors import ConfigError
from ..train import checkpoint, data
from ..train import model as model_lib
from ..train.loop import LabelScoring, Split, TrainResult, fit

log = logging.getLogger("kaggle_kit")
RESUME_IGNORES = ("budget", "progress", "patience", "report_to")  # may change between a run and its resumption
RANKED = ("multiple_choice", "label_probabilities")  # task types whose outputs are label probabilities


def prepare_data(cfg: TrainConfig, tok) -> Split:
    """Read, split (grouped by the competition's group column), build (prompt, completion) pairs and
    tokenise them; the valid split's metric comes through the competition."""
    from ..competitions.tasks.common import Run

    comp = competitions.get(cfg.competition)
    df = comp.read(cfg.train, labelled=True)
    if cfg.valid:
        train_df, valid_df = df, comp.read(cfg.valid, labelled=True)
    else:
        tr, va = data.group_split([str(x) for x in df[comp.group_column]], cfg.valid_fraction, cfg.seed)
        train_df, valid_df = df.iloc[tr].reset_index(drop=True), df.iloc[va].reset_index(drop=True)
    where = str(Path(cfg.train).parent)
    prompts, completions, perms = comp.train_pairs(train_df, tok, cfg.max_length, cfg.views, where)
    if comp.labels and cfg.head != "classifier":  # a label after a merged ending: infer/labels.py
        from ..infer.labels import check_endings

        check_endings(tok, prompts, list(comp.labels))
    softs = _soft_labels(cfg, comp, train_df, perms) if cfg.soft_labels else None
    train_ex, d1 = data.tokenize(tok, prompts, completions, cfg.max_length, cfg.loss, softs)
    v_prompts, v_completions, _ = comp.train_pairs(valid_df, tok, cfg.max_length, 1, where)
    valid_ex, d2 = data.tokenize(tok, v_prompts, v_completions, cfg.max_length, cfg.loss)
    run = Run(max_length=cfg.max_length, data_dir=where)

    def metric(model, tokenizer) -> float:
        return comp.evaluate(model, tokenizer, valid_df, run, progress=False)

    label_ids = None
    if comp.labels and (cfg.head == "classifier" or cfg.soft_labels):  # a row's answer token names its class
        from ..infer.primitives import label_token_ids

        label_ids = label_token_ids(tok, list(comp.labels))  # one distinct token each, or a ConfigError
    scoring = _label_scoring(cfg, comp, tok, valid_df, v_prompts, v_completions, valid_ex, run) if not d2 else None
    return Split(train_ex, valid_ex, metric, comp.higher_is_better, label_ids, dropped=d1 + d2, scoring=scoring)


def _label_scoring(cfg: TrainConfig, comp, tok, valid_df, prompts, completions, examples, run) -> LabelScoring | None:
    """The metric from the eval-loss forward, where it reads what the engine would: label probabilities
    (multiple_choice, label_probabilities) of single-token labels, with `loss: answer` labelling the label
    token right after the prompt. A row whose prompt the training cut otherwise than the engine (longer
    than max_length - 1 tokens) is scored through the engine; a label written as another token than the
    engine reads leaves the whole metric to the engine."""
    from ..infer import run_task
    from ..infer.engine import encode
    from ..infer.primitives import label_token_ids

    if cfg.loss != "answer" or cfg.head == "classifier" or comp.kind not in RANKED or not cfg.eval_metric:
        return None
    labels = list(comp.labels)
    try:
        tokens = label_token_ids(tok, labels)
    except ConfigError:
        return None
    if any(c not in labels or e.input_ids[-1] != tokens[labels.index(c)] for e, c in zip(examples, completions)):
        return None
    exact = [e.input_ids[:-1] == ids for e, ids in zip(examples, encode(tok, prompts, cfg.max_length), strict=True)]

    def engine(model, tokenizer, rows: list):
        df = valid_df.iloc[rows].reset_index(drop=True)
        return comp.assemble(df, run_task(comp.work(model, tokenizer, df, run), model, progress=False)[0])

    def metric(probs) -> float:
        return comp.score(comp.to_submission(valid_df, probs), valid_df)

    masks = comp.masks(valid_df) if hasattr(comp, "masks") else None
    return LabelScoring(tokens, masks, metric, exact, engine) if any(exact) else None


def _soft_labels(cfg, comp, train_df, perms) -> list:
    """A teacher's probabilities per training row, in each view's label order."""
    if comp.kind not in RANKED:
        raise ConfigError("soft_labels", f"{comp.name} is {comp.kind}; distillation needs label probabilities")
    ids = train_df[comp.id_column].tolist()
    names = getattr(comp, "class_names", comp.labels)
    teacher = data.read_soft_labels(cfg.soft_labels, ids, comp.labels, names, id_column=comp.id_column)
    if len(perms) % len(ids):
        raise ConfigError("soft_labels", "distillation with views needs every row in every view")
    return [[teacher[k % len(ids)][j] for j in perm] for k, perm in enumerate(perms)]


def train(cfg: TrainConfig) -> TrainResult:
    """Train a LoRA adapter as `cfg` says; resume from out/last when it holds a run of the same config."""
    import torch
    from accelerate import Accelerator

    from ..hardware import detect, guard_half
    from ..models import load_config, resolve_model

    deadline = Deadline.parse(cfg.budget)
    comp = competitions.get(cfg.competition)  # an unknown competition or a bad spec fails before any model loads
    if cfg.head == "classifier" and comp.kind not in RANKED:
        raise ConfigError("head", f"{comp.name} is {comp.kind}; a classifier head needs labels ({', '.join(RANKED)})")
    _check_trackers(cfg.report_to)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    # fp32 for a family that overflows fp16 (Gemma 2/3 on a T4), decided before accelerate's mixed precision
    profile = guard_half(detect(cfg.dtype, cfg.device), load_config(resolve_model(cfg.model)).model_type)
    precision = {"float16": "fp16", "bfloat16": "bf16"}.get(profile.compute_dtype, "no")
    accelerator = Accelerator(
        mixed_precision=precision if profile.device == "cuda" else "no",  # a CPU's bf16 autocast: see fit()
        cpu=profile.device == "cpu",
        log_with=cfg.report_to or None,
        project_dir=str(Path(cfg.out) / "logs"),
    )
    if cfg.report_to:
        # hyperparameters as trackers take them (tensorboard: numbers and strings only)
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in asdict(cfg).items()}
        accelerator.init_trackers(Path(cfg.out).name, config=hparams)
        log.info("reporting to %s (%s)", ", ".join(cfg.report_to), Path(cfg.out) / "logs")
    log.info(
        "accelerate: %s, %d process(es), mixed precision %s",
        accelerator.distributed_type,
        accelerator.num_processes,
        accelerator.mixed_precision,
    )
    tok = model_lib.tokenizer(cfg)
    split = prepare_data(cfg, tok)  # a bad file or template fails here, before the model loads
    if not split.train or not split.valid:
        raise ConfigError("train", f"no rows left to train ({len(split.train)}) or validate ({len(split.valid)})")
    model, _ = model_lib.build(cfg, profile, split.label_ids, tok)
    per_epoch = math.ceil(len(split.train) / cfg.batch_size / accelerator.num_processes / cfg.grad_accum)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))
    opt = model_lib.optimizer(model, cfg, profile)
    sched = model_lib.schedule(cfg, opt, total)
    model, opt = accelerator.prepare(model, opt)
    return fit(
        cfg, accelerator, model, tok, opt, sched, split, total, _resume(cfg, accelerator, model, opt, sched), deadline
    )


def _check_trackers(names: list[str]) -> None:
    """ConfigError naming the package to install for each `report_to` tracker that is not installed."""
    import importlib.util

    from ..config.train import TRACKERS

    for name in names:
        if not any(importlib.util.find_spec(p) for p in TRACKERS[name]):
            raise ConfigError("report_to", f"{name} is not installed: pip install {TRACKERS[name][0]}")


def _resume(cfg, accelerator, model, opt, sched) -> dict:
    """The loop state to start from: a fresh one, or out/last's when it holds a run of the same config."""
    out = Path(cfg.out)
    state = {"step": 0, "epoch": 0, "pos": 0, "best": None, "best_step": None, "stale": 0, "history": []}
    previous = checkpoint.saved_config(out / "last")
    if previous is None:
        return state
    mine = {k: v for k, v in asdict(cfg).items() if k not in RESUME_IGNORES}
    if {k: v for k, v in previous.items() if k not in RESUME_IGNORES} != mine:
        raise ConfigError("out", f"{out} holds a run with another config; use a new --set out=... to start afresh")
    scaler = getattr(accelerator, "scaler", None)
    state = checkpoint.load_state(out / "last", accelerator.unwrap_model(model), opt, sched, scaler) or state
    log.info("resuming %s at step %d", out, state["step"])
    return state
