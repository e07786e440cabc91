"""train(cfg): data, model, optimizer, then the fit() loop written out. accelerate supplies devices,
mixed precision and distribution (DDP, DeepSpeed); the loop itself is ours and reads top to bottom."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import competitions
from ..budget import Deadline
from ..config import TrainConfig
from ..errors import ConfigError
from ..progress import bar, loss_curve
from . import checkpoint, data
from . import model as model_lib

log = logging.getLogger("kaggle_kit")
RESUME_IGNORES = ("budget", "progress", "patience")  # may change between a run and its resumption


@dataclass
class TrainResult:
    """What a training run produced."""

    out: Path
    best: Path | None
    steps: int
    best_step: int | None
    best_value: float | None
    stopped: str  # 'done', 'budget' or 'early_stopping'
    history: list = field(default_factory=list)


@dataclass
class Split:
    """Tokenised train/valid examples plus what evaluation needs."""

    train: list
    valid: list
    valid_df: object = None  # labelled valid rows of a competition (for its metric)
    valid_pairs: tuple = ()  # (prompts, outputs) of alpaca valid rows (for perplexity)
    dropped: int = 0
    data_dir: str = "."  # the train file's folder (a rank_candidates catalogue is found there)


def prepare_data(cfg: TrainConfig, tok) -> Split:
    """Read, split (grouped by prompt), build (prompt, completion) pairs and tokenise them."""
    if cfg.competition == "alpaca":
        records = data.read_alpaca(cfg.train)
        if cfg.valid:
            train_rec, valid_rec = records, data.read_alpaca(cfg.valid)
        else:
            tr, va = data.group_split(
                [r["instruction"] + r.get("input", "") for r in records], cfg.valid_fraction, cfg.seed
            )
            train_rec, valid_rec = [records[i] for i in tr], [records[i] for i in va]
        train_ex, d1 = data.tokenize(tok, *data.alpaca_pairs(train_rec, tok), cfg.max_length, cfg.loss)
        v_pairs = data.alpaca_pairs(valid_rec, tok)
        valid_ex, d2 = data.tokenize(tok, *v_pairs, cfg.max_length, cfg.loss)
        return Split(train_ex, valid_ex, valid_pairs=v_pairs, dropped=d1 + d2)
    comp = competitions.get(cfg.competition)
    df = comp.read(cfg.train, labelled=True)
    if cfg.valid:
        train_df, valid_df = df, comp.read(cfg.valid, labelled=True)
    else:
        tr, va = data.group_split([str(x) for x in df[comp.group_column]], cfg.valid_fraction, cfg.seed)
        train_df, valid_df = df.iloc[tr].reset_index(drop=True), df.iloc[va].reset_index(drop=True)
    where = str(Path(cfg.train).parent)
    prompts, completions, perms = comp.train_pairs(train_df, tok, cfg.max_length, cfg.views, where)
    softs = None
    if cfg.soft_labels:
        if comp.kind not in ("multiple_choice", "label_probabilities"):
            raise ConfigError("soft_labels", f"{comp.name} is {comp.kind}; distillation needs label probabilities")
        ids = train_df[comp.id_column].tolist()
        teacher = data.read_soft_labels(
            cfg.soft_labels, ids, comp.labels, getattr(comp, "class_names", comp.labels), id_column=comp.id_column
        )
        # the teacher's probabilities follow each view's label order (rows of each view in row order)
        row_of = [k % len(ids) for k in range(len(perms))] if len(perms) % len(ids) == 0 else None
        if row_of is None:
            raise ConfigError("soft_labels", "distillation with views needs every row in every view")
        softs = [[teacher[row_of[k]][j] for j in perm] for k, perm in enumerate(perms)]
    train_ex, d1 = data.tokenize(tok, prompts, completions, cfg.max_length, cfg.loss, softs)
    v_prompts, v_completions, _ = comp.train_pairs(valid_df, tok, cfg.max_length, 1, where)
    valid_ex, d2 = data.tokenize(tok, v_prompts, v_completions, cfg.max_length, cfg.loss)
    return Split(train_ex, valid_ex, valid_df=valid_df, dropped=d1 + d2, data_dir=where)


def evaluate(model, tok, split: Split, cfg: TrainConfig) -> dict:
    """Eval loss and token perplexity on the valid split, plus the competition metric (or the NTU ADL homework's
    per-example perplexity for alpaca data) through the inference primitives."""
    import torch

    model.eval()
    nll, n = 0.0, 0
    with torch.inference_mode():
        for k in range(0, len(split.valid), cfg.batch_size):
            ids, mask, labels = data.collate(split.valid[k : k + cfg.batch_size], tok.pad_token_id)
            dev = model.device
            n_items = int((labels[:, 1:] != data.IGNORE).sum())
            logits, targets = data.label_logits(model, ids.to(dev), mask.to(dev), labels.to(dev))
            nll += float(data.token_loss(logits, targets, n_items)) * n_items
            n += n_items
    result = {"eval_loss": nll / max(n, 1), "perplexity": math.exp(min(nll / max(n, 1), 50))}
    if cfg.eval_metric:
        result["metric"] = _metric(model, tok, split, cfg)
    model.train()
    return result


def _metric(model, tok, split: Split, cfg: TrainConfig) -> float:
    from ..competitions.tasks.common import Run
    from ..infer import perplexity, run_task
    from ..metrics import perplexity as ppl_metric

    if cfg.competition == "alpaca":
        nlls, _ = perplexity(model, tok, *split.valid_pairs, max_length=cfg.max_length, progress=False)
        return ppl_metric([x for x in nlls if x is not None])
    comp = competitions.get(cfg.competition)
    df = split.valid_df
    outputs, _ = run_task(
        comp.work(model, tok, df, Run(max_length=cfg.max_length, data_dir=split.data_dir)), model, progress=False
    )
    kw = {}
    if comp.spec.metric == "scs":
        from ..embed import scorer

        kw["embed"] = scorer()
    return comp.score(comp.to_submission(df, outputs), df, **kw)


def metric_direction(cfg: TrainConfig) -> int:
    """+1 when larger values of the best_by quantity are better, -1 when smaller are."""
    if cfg.best_by == "eval_loss":
        return -1
    if cfg.competition == "alpaca":
        return -1  # perplexity
    return 1 if competitions.get(cfg.competition).higher_is_better else -1


def train(cfg: TrainConfig) -> TrainResult:
    """Train a LoRA adapter as `cfg` says; resume from out/last when it holds a run of the same config."""
    import torch
    from accelerate import Accelerator

    from ..hardware import detect, guard_half
    from ..models import load_config, resolve_model

    deadline = Deadline.parse(cfg.budget)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    # fp32 for a family that overflows fp16 (Gemma 2/3 on a T4), decided before accelerate's mixed precision
    profile = guard_half(detect(cfg.dtype, cfg.device), load_config(resolve_model(cfg.model)).model_type)
    precision = {"float16": "fp16", "bfloat16": "bf16"}.get(profile.compute_dtype, "no")
    accelerator = Accelerator(
        mixed_precision=precision if profile.device == "cuda" else "no",  # a CPU's bf16 autocast: see fit()
        cpu=profile.device == "cpu",
    )
    log.info(
        "accelerate: %s, %d process(es), mixed precision %s",
        accelerator.distributed_type,
        accelerator.num_processes,
        accelerator.mixed_precision,
    )
    model, tok = model_lib.build(cfg, profile)
    split = prepare_data(cfg, tok)
    if not split.train or not split.valid:
        raise ConfigError("train", f"no rows left to train ({len(split.train)}) or validate ({len(split.valid)})")
    per_epoch = math.ceil(len(split.train) / cfg.batch_size / accelerator.num_processes / cfg.grad_accum)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))
    opt = model_lib.optimizer(model, cfg, profile)
    sched = model_lib.schedule(cfg, opt, total)
    model, opt = accelerator.prepare(model, opt)
    out = Path(cfg.out)
    state = {"step": 0, "epoch": 0, "pos": 0, "best": None, "best_step": None, "stale": 0, "history": []}
    previous = checkpoint.saved_config(out / "last")
    if previous is not None:
        mine = {k: v for k, v in asdict(cfg).items() if k not in RESUME_IGNORES}
        if {k: v for k, v in previous.items() if k not in RESUME_IGNORES} != mine:
            raise ConfigError("out", f"{out} holds a run with another config; use a new --set out=... to start afresh")
        scaler = getattr(accelerator, "scaler", None)
        state = checkpoint.load_state(out / "last", accelerator.unwrap_model(model), opt, sched, scaler) or state
        log.info("resuming %s at step %d", out, state["step"])
    return fit(cfg, accelerator, model, tok, opt, sched, split, total, state, deadline)


def _any_process(accelerator, flag: bool) -> bool:
    """True when `flag` is true on any process (all stop together, or DDP hangs)."""
    if accelerator.num_processes == 1:
        return flag
    import torch

    return bool(accelerator.reduce(torch.tensor([int(flag)], device=accelerator.device), "max").item())


def _precision(cfg, accelerator, core):
    """A factory of the context each micro-batch's forward and backward run in."""
    import torch
    from peft.helpers import disable_input_dtype_casting

    from ..hardware import detect

    # On a CPU with native bf16 the loop autocasts to bf16 itself: accelerate's mixed precision is a
    # process-wide setting, and a notebook that trained in fp32 could not train in bf16 after it.
    cpu_bf16 = accelerator.device.type == "cpu" and detect(cfg.dtype, cfg.device).compute_dtype == "bfloat16"
    autocast = cpu_bf16 or accelerator.mixed_precision != "no"

    @contextlib.contextmanager
    def context():
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if cpu_bf16 else accelerator.autocast()
        # Under autocast peft's own cast of each LoRA input to fp32 (the LoRA weights' dtype) only makes
        # one more copy per adapted layer to save for backward (6 per layer on SmolLM2: 0.8 GB at 4 x 512
        # tokens); autocast casts the small LoRA weights instead.
        with amp, disable_input_dtype_casting(core, active=autocast):
            yield

    return context


def _warn_overfitting(history: list, window: list, state: dict):
    """Say plainly when eval loss rose while train loss fell since the last evaluation (the NTU ADL homework)."""
    evals = [h for h in history if "eval_loss" in h]
    if (
        len(evals) >= 2
        and window
        and evals[-1]["eval_loss"] > evals[-2]["eval_loss"]
        and np.mean(window) < state.get("last_train_loss", np.inf)
    ):
        log.warning(
            "step %d: eval loss rose (%.4f -> %.4f) while train loss fell: overfitting; the best "
            "checkpoint stays at step %s",
            state["step"],
            evals[-2]["eval_loss"],
            evals[-1]["eval_loss"],
            state["best_step"],
        )


def fit(
    cfg, accelerator, model, tok, opt, sched, split: Split, total: int, state: dict, deadline: Deadline
) -> TrainResult:
    """The loop: budget check, micro-batches with accumulation, clip, step, schedule, log, eval, save."""
    import torch

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    if state["step"] == 0:
        metrics_path.write_text("")
    history, sign = state["history"], metric_direction(cfg)
    lengths = [len(e.input_ids) for e in split.train]
    rank, world = accelerator.process_index, accelerator.num_processes
    trainable = [p for p in model.parameters() if p.requires_grad]
    stopped, step_seconds, window = "done", 0.0, []
    core = accelerator.unwrap_model(model)
    precision = _precision(cfg, accelerator, core)
    label_ids = None
    if cfg.soft_labels:  # distillation: the first token of each label, as tokenize() puts it
        labels_ = competitions.get(cfg.competition).labels
        label_ids = [tok(x, add_special_tokens=False)["input_ids"][0] for x in labels_]

    def record(entry: dict):
        history.append(entry)
        if accelerator.is_main_process:
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(entry) + "\n")

    def save(name: str, with_state: bool):
        if not accelerator.is_main_process:
            return
        loss_curve(history, out / "loss_curve.png")
        checkpoint.save(
            out / name,
            core,
            tok,
            cfg,
            state if with_state else None,
            [metrics_path, out / "loss_curve.png"],
            opt,
            sched,
            getattr(accelerator, "scaler", None),
        )

    def run_eval():
        result = {"step": state["step"], **evaluate(core, tok, split, cfg)}
        record(result)
        value = result["eval_loss" if cfg.best_by == "eval_loss" else "metric"]
        _warn_overfitting(history, window, state)
        if window:
            state["last_train_loss"] = float(np.mean(window))
        log.info(
            "step %d: eval loss %.4f, perplexity %.3f%s",
            state["step"],
            result["eval_loss"],
            result["perplexity"],
            f", metric {result['metric']:.4f}" if "metric" in result else "",
        )
        if state["best"] is None or sign * (value - state["best"]) > 0:
            state.update(best=value, best_step=state["step"], stale=0)
            save("best", with_state=False)
        else:
            state["stale"] += 1

    if state["step"] == 0:
        run_eval()  # step 0 = zero-shot: the number training has to beat
    model.train()
    pbar = bar(total, "train", unit="step", disable=not cfg.progress)
    pbar.update(state["step"])
    while state["step"] < total:
        batches = data.epoch_batches(lengths, cfg.batch_size, cfg.seed, state["epoch"])
        # every process takes the same number of micro-batches, or DDP's all-reduce would wait forever
        batches = batches[: len(batches) // world * world][rank::world]
        micro = batches[state["pos"] : state["pos"] + cfg.grad_accum]
        if not micro:
            state["epoch"], state["pos"] = state["epoch"] + 1, 0
            continue
        if _any_process(accelerator, deadline.expired(step_seconds)):
            stopped = "budget"
            break
        t0 = deadline.clock()
        examples = [[split.train[i] for i in b] for b in micro]
        n_items = sum(len(e.input_ids) - 1 - e.labels[1:].count(data.IGNORE) for ex in examples for e in ex)
        loss_sum = 0.0
        for k, ex in enumerate(examples):
            ids, mask, labels = (t.to(accelerator.device) for t in data.collate(ex, tok.pad_token_id))
            sync = contextlib.nullcontext() if k == len(examples) - 1 else accelerator.no_sync(model)
            with sync, precision():
                # logits only where a label is; loss = their NLL / labelled tokens of the whole step
                logits, targets = data.label_logits(model, ids, mask, labels)
                if label_ids is None:
                    loss = data.token_loss(logits, targets, n_items)
                else:
                    soft = torch.tensor([e.soft for e in ex], device=accelerator.device)
                    loss = data.distill_loss(logits, targets, soft, label_ids, cfg.distill_weight, n_items)
                accelerator.backward(loss)
            loss_sum += float(loss.detach()) * n_items
        grad_norm = float(accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm))
        opt.step()
        if not accelerator.optimizer_step_was_skipped:  # fp16: an overflowed step leaves the schedule too
            sched.step()
        opt.zero_grad(set_to_none=True)
        state["step"] += 1
        state["pos"] += len(micro)
        window.append(loss_sum / max(n_items, 1))
        step_seconds = deadline.clock() - t0
        pbar.update(1)
        if state["step"] % cfg.log_every == 0 or state["step"] == total:
            record(
                {
                    "step": state["step"],
                    "train_loss": float(np.mean(window)),
                    "lr": sched.get_last_lr()[0],
                    "grad_norm": grad_norm,
                    "epoch": state["epoch"],
                    "elapsed": deadline.elapsed(),
                }
            )
        if state["step"] % cfg.eval_every == 0 or state["step"] == total:
            run_eval()
            window = []
            save("last", with_state=True)
            if cfg.patience and state["stale"] >= cfg.patience:
                stopped = "early_stopping"
                log.info("early stopping: %d evaluations without improvement", state["stale"])
                break
    pbar.close()
    if stopped == "budget":
        run_eval()
        save("last", with_state=True)
    accelerator.wait_for_everyone()
    best = out / "best" if (out / "best").exists() else None
    log.info(
        "training %s after %d steps; best %s %.4f at step %s (%s)",
        stopped,
        state["step"],
        cfg.best_by,
        state["best"],
        state["best_step"],
        best,
    )
    return TrainResult(out, best, state["step"], state["best_step"], state["best"], stopped, history)
