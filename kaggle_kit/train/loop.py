"""The training engine: the fit() loop written out, and the evaluation it runs. accelerate supplies
devices, mixed precision and distribution (DDP); the loop itself is ours and reads top to bottom. It knows
no competition: the job (kaggle_kit.jobs.training) hands it tokenised examples and a metric function."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..budget import Deadline
from ..config import TrainConfig
from ..infer.engine import free_cuda_cache, is_oom
from ..progress import bar, loss_curve
from . import checkpoint, data, step

log = logging.getLogger("kaggle_kit")
HEAP_GROWTH = 1.0  # RSS growth past the first steps' peak that hands a CPU run's heap back (infer/fast/heap.py)


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
class LabelScoring:
    """A metric the eval-loss forward can feed: each valid row's one labelled position (loss: answer) is
    where the inference engine reads the label tokens' probabilities, from the same prompt tokens. The
    evaluation then takes them there, as the engine's label head does, instead of running the valid rows
    a second time through the engine; only rows whose prompt the training cut otherwise (longer than
    max_length) run there."""

    token_ids: list  # each label's token, as the engine scores it
    masks: object  # (rows, labels) booleans: the labels a row offers (None: every label)
    metric: object  # (rows, labels) probabilities of the valid rows, in their order -> the metric
    exact: list  # per valid row: its eval-loss forward reads the engine's tokens (False: a prompt cut otherwise)
    engine: object  # (model, tokenizer, row indices) -> their probabilities through the engine


@dataclass
class Split:
    """Tokenised train/valid examples, and the metric of a model on the valid rows (None: no metric)."""

    train: list
    valid: list
    metric: object = None  # (model, tokenizer) -> float
    higher_is_better: bool = True  # the metric's direction
    label_ids: list | None = None  # each label's own token (distillation, classification head)
    dropped: int = 0
    scoring: LabelScoring | None = None  # the metric from the eval-loss forward (None: through `metric`)
    eval_rows: int | None = None  # the evaluation batch an out-of-memory error left (None: the config's)


def evaluate(model, tok, split: Split, cfg: TrainConfig, precision=contextlib.nullcontext) -> dict:
    """Eval loss and token perplexity on the valid split, in batches of cfg.eval_batch_size rows (a batch
    out of memory runs again in halves, and so does every later one: split.eval_rows), plus
    split.metric (the competition's, through the inference engine) when cfg.eval_metric. Under
    `precision()`, the training steps' autocast, as Trainer evaluates (12 Science Exam rows on SmolLM2,
    bf16 CPU: 6.4 s against 13.0 without it). With split.scoring the metric comes from the eval-loss
    forward itself (one pass over the valid rows instead of two)."""
    import torch

    model.eval()
    nll, n = 0.0, 0
    want_metric = cfg.eval_metric and split.metric is not None
    scoring = split.scoring if want_metric else None
    probs = None if scoring is None else np.full((len(split.valid), len(scoring.token_ids)), np.nan)
    # batches of rows of like length (the loss is a sum, so the order is free): less padding to run
    order = sorted(range(len(split.valid)), key=lambda i: len(split.valid[i].input_ids))
    size = split.eval_rows or cfg.eval_batch_size or cfg.batch_size
    with torch.inference_mode(), precision():
        head, k = None, 0
        while k < len(order):
            rows = order[k : k + size]
            dev = model.device
            ids, mask, labels = (t.to(dev) for t in data.collate([split.valid[i] for i in rows], tok.pad_token_id))
            if probs is not None and head is None:
                head = _label_head(model, ids, scoring)
                probs = None if head is None else probs
            try:
                nll += _eval_nll(model, cfg, split, head, scoring, probs, rows, ids, mask, labels)
            except (RuntimeError, MemoryError) as exc:
                if not is_oom(exc) or len(rows) == 1:
                    raise
                del ids, mask, labels
                free_cuda_cache()
                size = split.eval_rows = len(rows) // 2
                log.warning(
                    "evaluation: %d rows x %d tokens out of memory; the batch runs again, every evaluation batch "
                    "from now on of at most %d rows (the same loss)",
                    len(rows),
                    max(len(split.valid[i].input_ids) for i in rows),
                    size,
                )
                continue
            n += int((labels[:, 1:] != data.IGNORE).sum())
            k += len(rows)
    result = {"eval_loss": nll / max(n, 1), "perplexity": math.exp(min(nll / max(n, 1), 50))}
    if want_metric and probs is not None:
        cut = [i for i, ok in enumerate(scoring.exact) if not ok]  # rows the engine reads otherwise
        if cut:
            with precision():
                probs[cut] = scoring.engine(model, tok, cut)
        result["metric"] = scoring.metric(probs)
    elif want_metric:
        with precision():
            result["metric"] = split.metric(model, tok)
    model.train()
    return result


def _eval_nll(model, cfg, split, head, scoring, probs, rows, ids, mask, labels) -> float:
    """The NLL sum of one evaluation batch; with `probs` (the label head's metric) its rows' label
    probabilities go there too."""
    if probs is not None:
        batch_nll, probs[rows] = _answer_and_label_probs(model, head, scoring, rows, ids, mask, labels)
        return batch_nll
    n_items = int((labels[:, 1:] != data.IGNORE).sum())
    return float(step.loss(model, model, cfg, split, ids, mask, labels, n_items)) * n_items


def _label_head(model, ids, scoring: LabelScoring):
    """The engine's label head of `model` (infer/fast/label_head.py: fp32 label rows where they reproduce
    the model), or None where the output layer alone does not give the model's logits (data.head_is_exact):
    the metric then runs through the engine."""
    from ..infer import fast
    from ..infer.fast.label_head import LabelHead

    if not data.head_is_exact(model, ids):
        return None
    return LabelHead(model, scoring.token_ids, enabled=fast.paths(model).label_head)


def _answer_and_label_probs(model, head, scoring: LabelScoring, rows: list, ids, mask, labels):
    """(NLL sum, (rows, labels) probabilities) of a batch with one labelled position a row: the position's
    full logits give the eval loss (as data.chunked_token_loss, one chunk), its label logits the metric's
    probabilities (as the engine's choice task: the label head, labels a row lacks at 0, temperature 1)."""
    import torch
    import torch.nn.functional as F

    from ..infer.fast.label_head import label_probs

    hidden, targets = data.labelled_hidden(model, model, ids, mask, labels)
    if len(targets) != len(rows):
        raise RuntimeError(f"{len(targets)} labelled positions in a batch of {len(rows)} rows; loss: answer has one")
    logits = data.head_logits(model, hidden)
    nll = float(F.cross_entropy(logits.float(), targets, reduction="sum"))
    allowed = None if scoring.masks is None else torch.as_tensor(np.asarray(scoring.masks)[rows])
    return nll, label_probs(head.of_hidden(hidden, logits), allowed)


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
    from ..infer.fast import heap

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    # the log as of the state we start from: a run killed after its last save logged steps it will redo
    if accelerator.is_main_process:
        metrics_path.write_text("".join(json.dumps(h) + "\n" for h in state["history"]))
    history = state["history"]
    # +1 when larger values of the best_by quantity are better: the metric's direction, or eval loss (lower)
    sign = (1 if split.higher_is_better else -1) if cfg.best_by == "metric" else -1
    lengths = [len(e.input_ids) for e in split.train]
    rank, world = accelerator.process_index, accelerator.num_processes
    trainable = [p for p in model.parameters() if p.requires_grad]
    stopped, step_seconds, window = "done", 0.0, []
    core = accelerator.unwrap_model(model)
    precision = _precision(cfg, accelerator, core)
    forward_backward = functools.partial(step.forward_backward, accelerator, model, core, cfg, split, precision, tok)
    watch = heap.HeapWatch(HEAP_GROWTH) if accelerator.device.type == "cpu" else None

    def record(entry: dict):
        history.append(entry)
        if accelerator.is_main_process:
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(entry) + "\n")
        if cfg.report_to:  # accelerate's trackers (a no-op without them); the step is the x axis
            accelerator.log({k: v for k, v in entry.items() if k != "step"}, step=entry["step"])

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
        result = {"step": state["step"], **evaluate(core, tok, split, cfg, precision)}
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
        batches = data.epoch_batches(lengths, cfg.batch_size, cfg.seed, state["epoch"], lead=world)
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
        loss_sum = step.accumulate(forward_backward, examples, n_items, state, opt, world)
        grad_norm = float(accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm))
        opt.step()
        if not accelerator.optimizer_step_was_skipped:  # fp16: an overflowed step leaves the schedule too
            sched.step()
        opt.zero_grad(set_to_none=True)
        state["step"] += 1
        state["pos"] += len(micro)
        window.append(loss_sum / max(n_items, 1))
        if watch is not None:
            watch.step_end()  # glibc's free gaps grew RSS by ~0.8 GB in 120 steps (infer/fast/heap.py)
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
    if cfg.report_to:
        accelerator.end_training()
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
