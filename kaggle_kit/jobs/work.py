"""The model work of one prediction run: load the model, build the competition's Task, run it (one
shard, or worker processes one per GPU), and turn checkpointed results back into outputs."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path

from .. import competitions
from ..budget import Deadline
from ..config import PredictConfig
from ..errors import ConfigError, KitError

log = logging.getLogger("kaggle_kit")


def _shots(comp, cfg, df) -> str:
    """The solved-examples block for cfg.shots, never using a row of the test file itself."""
    if not cfg.shots:
        return ""
    if comp.shots is None:
        raise ConfigError("shots", f"{comp.name} ({comp.kind}) has no few-shot prompt; multiple_choice has")
    return comp.shots(comp.read(cfg.shots_file, labelled=True), cfg.shots, exclude=df[comp.id_column].tolist())


def _check_context(comp, cfg) -> None:
    """A context passage file only where the competition retrieves, and readable before any model loads."""
    if not cfg.context:
        return
    if comp.queries is None:
        raise ConfigError("context", f"{comp.name} ({comp.kind}) takes no retrieval context; multiple_choice does")
    from ..playbooks.retrieval import read_passages

    read_passages(cfg.context, cfg.context_column)


def _check_labels(comp, cfg, df):
    """A label that is not a single token for the model's tokenizer, or a prompt ending that the
    tokenizer merges with a label (infer/labels.py), stops the run before the model loads (the tokenizer
    alone is read), naming the label or the ending. The first row's prompt stands for the template's end
    where the rows' prompts are the ones scored; other task types are checked as their work starts.
    Returns the tokenizer it read, for the model's load (Gemma's 262k vocabulary: 3 s a read), or None."""
    if not comp.labels or cfg.ensemble:
        return None
    from ..infer import label_token_ids
    from ..models import adapted_tokenizer

    fmt, kwargs = getattr(cfg, "chat_format", None), getattr(cfg, "chat_template_kwargs", None)
    *_, tok = adapted_tokenizer([cfg.adapter] if cfg.adapter else [], cfg.model, None, fmt, kwargs)
    prompts = []
    if comp.kind in ("multiple_choice", "label_probabilities"):  # whose rows' prompts are the ones scored
        context = {"context": [""]} if getattr(cfg, "context", None) else {}
        prompts = comp.examples(df.iloc[:1].reset_index(drop=True), tok, cfg.max_length, **context)
    label_token_ids(tok, list(comp.labels), prompts)
    return tok


def check_tta(comp, tta: int) -> None:
    """ConfigError unless the competition supports `tta` views."""
    if tta > comp.max_views:
        raise ConfigError("tta", f"{comp.name} supports at most {comp.max_views} view(s), got {tta}")


def _task(comp, model, tok, df, cfg, max_length: int):
    """The inference Task for a competition's rows."""
    from ..competitions.tasks.common import Run
    from ..infer.vllm_backend import VllmModel
    from ..playbooks.calibration import temperature

    check_tta(comp, cfg.tta)
    run = Run(
        max_length=max_length,
        tta=cfg.tta,
        shots=_shots(comp, cfg, df),
        temperature=temperature(cfg),
        max_new_tokens=cfg.max_new_tokens,
        data_dir=str(Path(cfg.data).parent),
    )
    if getattr(cfg, "context", None):
        from ..playbooks.retrieval import contexts

        run.context = contexts(comp.queries(df), tok, cfg)
    if isinstance(model, VllmModel):
        from ..infer import vllm_backend

        run.engine = vllm_backend
    return comp.work(model, tok, df, run)


def _load(cfg, new_tokens: int | None = None, labels: int = 0, tok=None):
    """(model, tokenizer, cfg.batch_tokens) by cfg's backend; `new_tokens` is what a generation adds to a
    prompt (vLLM sizes its context for it), `labels` how many label tokens a row is scored over, `tok` the
    tokenizer _check_labels read for cfg (None: read it)."""
    from ..hardware import detect
    from ..models import load_model

    profile = detect(cfg.dtype, cfg.device)
    backend = getattr(cfg, "backend", "transformers")
    if backend != "transformers" and _vllm_can_run(cfg, profile, backend, labels):
        return _load_vllm(cfg, profile, new_tokens, tok)
    model, tok = load_model(
        *(cfg.model, profile, cfg.adapter, cfg.quant, getattr(cfg, "chat_format", None)),
        fast_paths=getattr(cfg, "fast_paths", True),
        chat_template_kwargs=getattr(cfg, "chat_template_kwargs", None),
        tokenizer=tok,
    )
    return model, tok, cfg.batch_tokens  # None: the engine's default for the device and task


def _vllm_can_run(cfg, profile, backend: str, labels: int = 0) -> bool:
    """Whether vLLM runs this model (scoring `labels` label tokens a row) here: `auto` falls back to
    transformers (saying why), `vllm` refuses."""
    from ..infer import vllm_backend
    from ..models import adapter_defaults, check_adapter, load_config, resolve_model

    name, quant, *_ = adapter_defaults([cfg.adapter] if cfg.adapter else [], cfg.model, cfg.quant, None)
    config = load_config(resolve_model(name))
    reason = vllm_backend.why_not() or vllm_backend.check(config.model_type, profile, quant)
    if reason is None and labels > vllm_backend.MAX_LABELS:
        reason = f"{labels} labels, vLLM returns at most {vllm_backend.MAX_LABELS} log-probabilities a position"
    if reason is None and cfg.adapter:
        problem = vllm_backend.adapter_problem(check_adapter(Path(cfg.adapter)), config)
        reason = problem and f"{cfg.adapter}: {problem}"
    if reason is None:
        return True
    if backend == "vllm":
        raise ConfigError("backend", f"vllm cannot run this: {reason}; use --backend transformers")
    log.info("backend auto: transformers (%s)", reason)
    if getattr(cfg, "tensor_parallel", 1) > 1:
        log.warning(
            "backend auto: --tensor-parallel %d ignored, transformers runs the model on one GPU", cfg.tensor_parallel
        )
    return False


def _load_task(cfg, comp, df, tok=None):
    """(model, tokenizer, the Task for df's rows at cfg.max_length, padded tokens per batch: cfg's, else the
    engine's default for the device and the kind of task); `tok`: the tokenizer already read for cfg."""
    from ..infer.primitives import default_batch_tokens

    new_tokens = cfg.max_new_tokens or getattr(comp.settings, "max_new_tokens", None)
    model, tok, batch_tokens = _load(cfg, new_tokens, len(comp.labels), tok)
    task = _task(comp, model, tok, df, cfg, cfg.max_length)
    return model, tok, task, batch_tokens or default_batch_tokens(model, task.kind)


def _load_vllm(cfg, profile, new_tokens: int | None = None, tok=None):
    """(vLLM engine, tokenizer, tokens per step) for cfg's model / adapter (see infer/vllm_backend.py);
    `tok`: the tokenizer already read for cfg (None: read it)."""
    from ..infer import vllm_backend
    from ..models import adapted_tokenizer

    adapters = [cfg.adapter] if cfg.adapter else []
    path, quant, config, tok = adapted_tokenizer(
        adapters, cfg.model, None, cfg.chat_format, cfg.chat_template_kwargs, tok
    )
    positions = getattr(config.get_text_config(decoder=True), "max_position_embeddings", None)
    model = vllm_backend.load(
        *(path, profile, cfg.adapter, cfg.max_length, cfg.tensor_parallel, cfg.quant or quant),
        max_new_tokens=new_tokens,
        positions=positions,
    )
    return model, tok, cfg.batch_tokens or vllm_backend.BATCH_TOKENS


def _run_shard(cfg: PredictConfig, comp, df, deadline: Deadline, shard: tuple[int, int], tok=None):
    """Load the model and compute one shard (all rows when (0, 1)): (outputs, stats, max_length, planned);
    `tok`: the tokenizer already read for cfg (None: read it)."""
    from ..infer import run_task
    from ..infer.planner import fit_max_length, measure, predict_seconds, worth_planning

    model, tok, task, batch_tokens = _load_task(cfg, comp, df, tok)
    max_length, planned = cfg.max_length, None
    # Plan only when the budget is large enough for three timing batches to be noise, and the run for them
    # to be a small part of it (asked last: it plans the batches).
    budgeted = cfg.plan and deadline.seconds is not None and deadline.remaining() > 60
    if budgeted and worth_planning(task.lengths, batch_tokens, steps=task.steps):
        tp = measure(task.step, task.lengths, batch_tokens, steps=task.steps)
        lengths = task.lengths
        share = deadline.remaining() * shard[1]  # shards run side by side
        planned = predict_seconds(lengths, batch_tokens, tp, task.steps)
        log.info(
            "planner: %d rows predicted to take %.0fs (budget left %.0fs)",
            len(lengths),
            planned / shard[1],
            deadline.remaining(),
        )
        if planned > share:
            max_length, planned = fit_max_length(lengths, batch_tokens, tp, share, cfg.max_length, steps=task.steps)
            log.warning(
                "planner: lowering max_length %d -> %d to fit the budget (predicted %.0fs)",
                cfg.max_length,
                max_length,
                planned / shard[1],
            )
            task = _task(comp, model, tok, df, cfg, max_length)
        planned /= shard[1]
    outputs, stats = run_task(
        task,
        model,
        batch_tokens=batch_tokens,
        deadline=deadline,
        progress=cfg.progress,
        shard=shard,
        checkpoint=cfg.checkpoint_path(),
    )
    return outputs, stats, max_length, planned


def _worker(cfg: PredictConfig, shard: tuple[int, int], seconds_left: float | None, threads: int) -> dict:
    """One worker process: its own GPU (or CPU threads), one shard, results into its checkpoint file."""
    if os.environ.get("KAGGLE_KIT_WORKER_GPUS", "0") != "0":
        os.environ["CUDA_VISIBLE_DEVICES"] = str(shard[0])
    import torch

    torch.set_num_threads(threads)
    comp = competitions.get(cfg.competition)
    df = limited(comp.read(cfg.data), cfg)
    _, stats, max_length, planned = _run_shard(cfg, comp, df, Deadline(seconds_left, margin=0.0), shard)
    return {**asdict(stats), "max_length": max_length, "planned": planned}


def _run_workers(cfg: PredictConfig, n_rows: int, deadline: Deadline):
    """cfg.workers processes, one shard each; returns ({row: output}, summed stats, max_length, planned)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from ..infer.checkpoint import read_results

    gpus = _gpu_count()
    if gpus and cfg.workers > gpus:
        raise KitError(f"--workers {cfg.workers} but {gpus} GPU(s): use one worker per GPU")
    os.environ["KAGGLE_KIT_WORKER_GPUS"] = str(gpus)
    threads = max(1, (os.cpu_count() or 1) // cfg.workers)
    seconds = None if deadline.seconds is None else deadline.remaining()
    shards = [(i, cfg.workers) for i in range(cfg.workers)]
    parts = [
        PredictConfig(**{**asdict(cfg), "workers": 1, "checkpoint": f"{cfg.checkpoint_path()}.{i}of{n}"})
        for i, n in shards
    ]
    with ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("spawn")) as pool:
        stats = list(pool.map(_worker, parts, shards, [seconds] * cfg.workers, [threads] * cfg.workers))
    results = {}
    for part in parts:
        results.update(read_results(part.checkpoint_path()) or {})
    total = sum_stats(stats, parallel=True)
    planned = [s["planned"] for s in stats if s["planned"] is not None]
    return results, total, min(s["max_length"] for s in stats), max(planned) if planned else None, parts


def sum_stats(stats: list[dict], parallel: bool) -> dict:
    """Run statistics of several runs added up; seconds the longest when they ran side by side (workers),
    their sum when one ran after the other (ensemble members)."""
    keys = ("rows_done", "rows_resumed", "tokens", "padded_tokens", "batches", "oom_splits")
    total = {k: sum(s.get(k, 0) for s in stats) for k in keys}
    seconds = [s.get("seconds", 0.0) for s in stats]
    total["seconds"] = max(seconds) if parallel else sum(seconds)
    return total


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _rows_with_output(outputs) -> int:
    """Rows that got a prediction: no NaN probability / not None."""
    import numpy as np

    if isinstance(outputs, np.ndarray):
        return int((~np.isnan(outputs).any(axis=1)).sum())
    return sum(o is not None for o in outputs)


def outputs_from_results(comp, df, results: dict, data_dir: str = "."):
    """The competition's outputs for df's rows from {task item: result} (a task's items are its rows, or
    for rank_candidates its (row, candidate) pairs): a probability array with NaN rows, or a list."""
    return comp.assemble(df, [results.get(i) for i in range(comp.items(df, data_dir))], data_dir)


def limited(df, cfg):
    """The rows the model runs on: all, or the first cfg.limit_rows (a smoke run)."""
    return df if not getattr(cfg, "limit_rows", None) else df.head(cfg.limit_rows)


def padded(outputs, n: int):
    """Outputs for the first rows extended to n rows with 'no output' (NaN rows, or None)."""
    import numpy as np

    if len(outputs) >= n:
        return outputs
    if isinstance(outputs, np.ndarray):
        return np.vstack([outputs, np.full((n - len(outputs), outputs.shape[1]), np.nan)])
    return list(outputs) + [None] * (n - len(outputs))
