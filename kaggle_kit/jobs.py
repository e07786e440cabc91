"""One function per job, called the same way from notebooks, the CLI and tests."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import competitions
from .budget import Deadline
from .config import MergeConfig, PredictConfig, RehearseConfig, ScoreConfig, ValidateConfig
from .errors import ConfigError, InputError, KitError
from .io import read_submission, write_csv_atomic

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
    resumed: int = 0
    max_length: int = 0  # what the planner let the run use
    planned_seconds: float | None = None  # the planner's prediction for the inference part
    stats: dict = field(default_factory=dict)


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
    from .retrieval import read_passages

    read_passages(cfg.context, cfg.context_column)


def _mean_prompt_text(comp, cfg) -> str | None:
    """The optimised mean text from cfg.mean_prompt (generate_text), checked before any model loads."""
    if not getattr(cfg, "mean_prompt", None):
        return None
    if comp.mean_text is None:
        raise ConfigError(
            "mean_prompt", f"{comp.name} ({comp.kind}) has no constant text prediction; generate_text has"
        )
    path = Path(cfg.mean_prompt)
    text = path.read_text(encoding="utf-8").strip() if path.is_file() else ""
    if not text:
        raise InputError(path, "missing or empty; make it with `kaggle-kit mean-prompt`")
    return text


def _finish(comp, cfg, sub):
    """The submission with the optimised mean text applied (cfg.mean_prompt)."""
    text = _mean_prompt_text(comp, cfg)
    return sub if text is None else comp.with_mean_text(sub, text, cfg.append_mean_prompt)


def mean_prompt(cfg):
    """Search the mean prompt of the known prompts in cfg.prompts and write it to cfg.out."""
    from .embed import scorer
    from .io import Column, read_csv, write_text_atomic
    from .mean_prompt import optimize, vocabulary

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


def _check_labels(comp, cfg) -> None:
    """A label that is not a single token for the model's tokenizer stops the run before the model
    loads (the tokenizer alone is read), naming the label."""
    if not comp.labels or cfg.ensemble:
        return
    from .infer import label_token_ids
    from .models import adapter_defaults, load_tokenizer, resolve_model

    name, _, _ = adapter_defaults([cfg.adapter] if cfg.adapter else [], cfg.model, None, None)
    label_token_ids(load_tokenizer(resolve_model(name)), list(comp.labels))


def check_tta(comp, tta: int) -> None:
    """ConfigError unless the competition supports `tta` views."""
    if tta > comp.max_views:
        raise ConfigError("tta", f"{comp.name} supports at most {comp.max_views} view(s), got {tta}")


def _task(comp, model, tok, df, cfg, max_length: int):
    """The inference Task for a competition's rows."""
    from .calibration import temperature
    from .competitions.tasks.common import Run
    from .infer.vllm_backend import VllmModel

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
        from .retrieval import contexts

        run.context = contexts(comp.queries(df), tok, cfg)
    if isinstance(model, VllmModel):
        from .infer import vllm_backend

        run.engine = vllm_backend
    return comp.work(model, tok, df, run)


def _load(cfg):
    from .hardware import detect
    from .models import load_model

    profile = detect(cfg.dtype, cfg.device)
    backend = getattr(cfg, "backend", "transformers")
    if backend != "transformers" and _vllm_can_run(cfg, profile, backend):
        return _load_vllm(cfg, profile)
    model, tok = load_model(
        cfg.model, profile, cfg.adapter, cfg.quant, getattr(cfg, "chat_format", None), getattr(cfg, "fast_paths", True)
    )
    return model, tok, cfg.batch_tokens  # None: the engine's default for the device and task


def _vllm_can_run(cfg, profile, backend: str) -> bool:
    """Whether vLLM runs this model here: `auto` falls back to transformers (saying why), `vllm` refuses."""
    from .infer import vllm_backend
    from .models import adapter_defaults, load_config, resolve_model

    name, quant, _ = adapter_defaults([cfg.adapter] if cfg.adapter else [], cfg.model, cfg.quant, None)
    reason = vllm_backend.why_not() or vllm_backend.check(load_config(resolve_model(name)).model_type, profile, quant)
    if reason is None:
        return True
    if backend == "vllm":
        raise ConfigError("backend", f"vllm cannot run this: {reason}; use --backend transformers")
    log.info("backend auto: transformers (%s)", reason)
    return False


def _load_task(cfg, comp, df):
    """(model, tokenizer, the Task for df's rows at cfg.max_length, padded tokens per batch: cfg's, else the
    engine's default for the device and the kind of task)."""
    from .infer.primitives import default_batch_tokens

    model, tok, batch_tokens = _load(cfg)
    task = _task(comp, model, tok, df, cfg, cfg.max_length)
    return model, tok, task, batch_tokens or default_batch_tokens(model, task.kind)


def _load_vllm(cfg, profile):
    """(vLLM engine, tokenizer, tokens per step) for cfg's model / adapter (see infer/vllm_backend.py)."""
    from .infer import vllm_backend
    from .models import adapter_defaults, load_tokenizer, resolve_model
    from .templates import apply_chat_format

    name, quant, fmt = adapter_defaults([cfg.adapter] if cfg.adapter else [], cfg.model, None, cfg.chat_format)
    path = resolve_model(name)
    tok = apply_chat_format(load_tokenizer(path), fmt)
    model = vllm_backend.load(path, profile, cfg.adapter, cfg.max_length, cfg.tensor_parallel, cfg.quant or quant)
    return model, tok, cfg.batch_tokens or vllm_backend.BATCH_TOKENS


def _run_shard(cfg: PredictConfig, comp, df, deadline: Deadline, shard: tuple[int, int]):
    """Load the model and compute one shard (all rows when (0, 1)): (outputs, stats, max_length, planned)."""
    from .infer import run_task
    from .infer.planner import fit_max_length, measure, predict_seconds

    model, tok, task, batch_tokens = _load_task(cfg, comp, df)
    max_length, planned = cfg.max_length, None
    # Plan only when the budget is large enough for three timing batches to be noise.
    if cfg.plan and deadline.seconds is not None and deadline.remaining() > 60:
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
    df = comp.read(cfg.data)
    _, stats, max_length, planned = _run_shard(cfg, comp, df, Deadline(seconds_left, margin=0.0), shard)
    return {**asdict(stats), "max_length": max_length, "planned": planned}


def _run_workers(cfg: PredictConfig, n_rows: int, deadline: Deadline):
    """cfg.workers processes, one shard each; returns ({row: output}, summed stats, max_length, planned)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from .infer.checkpoint import read_results

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


def _check_cascade_dtype(cfg: PredictConfig) -> None:
    """A dtype cascade of the same model must change the dtype the run computes in, or it re-runs the
    same numbers; said before any model loads."""
    if not cfg.cascades_same_model():
        return
    from .hardware import detect

    run = detect(cfg.dtype, cfg.device).dtype
    if detect(cfg.cascade_dtype, cfg.device).dtype == run:
        raise ConfigError("cascade_dtype", f"the run already computes in {run}; re-checking needs another dtype")


def predict(cfg: PredictConfig) -> PredictResult:
    """Read and check the test file, write a complete fallback submission, then predict and replace it.

    Rows the budget does not reach keep the competition's fallback row, so the output is always valid.
    A rerun after a kill resumes from the checkpoint file and writes the same bytes.
    """
    deadline = Deadline.parse(cfg.budget)
    comp = competitions.get(cfg.competition)
    df = comp.read(cfg.data)  # every cell checked before any model loads
    check_tta(comp, cfg.tta)
    _shots(comp, cfg, df)  # a bad shots file fails here too, not after the model loaded
    _check_context(comp, cfg)
    _check_cascade_dtype(cfg)
    if cfg.backend == "vllm":
        from .infer import vllm_backend

        if vllm_backend.why_not():
            raise ConfigError("backend", f"vllm cannot run here: {vllm_backend.why_not()}; use --backend transformers")
    ids = df[comp.id_column].tolist()
    shard = cfg.shard_tuple()
    if cfg.shard is None:
        write_csv_atomic(_finish(comp, cfg, comp.fallback(ids, df)), cfg.out)
        log.info("%s: %d rows read; fallback submission written to %s", comp.name, len(df), cfg.out)
    _check_labels(comp, cfg)  # with the tokenizer alone, before the model loads
    if cfg.ensemble:
        from .ensemble import predict_members

        outputs, stats, leftovers = predict_members(cfg, comp, df, deadline)
        rows_done, max_length, planned = _rows_with_output(outputs), cfg.max_length, None
    elif cfg.workers > 1:
        results, stats, max_length, planned, parts = _run_workers(cfg, len(df), deadline)
        outputs = outputs_from_results(comp, df, results, str(Path(cfg.data).parent))
        rows_done, leftovers = len(results), [p.checkpoint_path() for p in parts]
    else:
        outputs, st, max_length, planned = _run_shard(cfg, comp, df, deadline, shard)
        stats, rows_done, leftovers = asdict(st), st.rows_done, [cfg.checkpoint_path()]
    if cfg.cascades():
        from .ensemble import cascade

        outputs, stats["cascade_rows"], files = cascade(cfg, comp, df, outputs, deadline)
        leftovers += files
    rows = len(df) if cfg.shard is None else stats["rows"]
    if cfg.shard is None:
        write_csv_atomic(_finish(comp, cfg, comp.to_submission(df, outputs)), cfg.out)
        if rows_done == len(df):  # complete: the checkpoint has served its purpose
            for path in leftovers:
                Path(path).unlink(missing_ok=True)
    ran = stats["rows_done"] - stats["rows_resumed"]
    result = PredictResult(
        Path(cfg.out),
        rows,
        rows_done,
        rows - rows_done,
        deadline.elapsed(),
        ran / stats["seconds"] if stats["seconds"] else 0.0,
        stats["rows_resumed"],
        max_length,
        planned,
        stats,
    )
    log.info(
        "%s: %d rows, %d predicted (%d resumed), %d fallback, %.2f rows/s; inference %.1fs%s; total %.1fs",
        comp.name,
        result.rows,
        result.predicted,
        result.resumed,
        result.fallback,
        result.rows_per_s,
        stats["seconds"],
        f" (planned {planned:.1f}s)" if planned else "",
        result.seconds,
    )
    return result


def merge(cfg: MergeConfig) -> PredictResult:
    """Join the shard files of `predict --shard I/N` into one submission (identical to a single run)."""
    from .infer.checkpoint import read_header, read_results

    comp = competitions.get(cfg.competition)
    df = comp.read(cfg.data)
    results, runs, shards = {}, set(), set()
    for part in cfg.parts:
        if not Path(part).is_file():
            raise InputError(part, "shard file not found")
        header = read_header(part)
        runs.add(header["run"].rsplit("-", 1)[0])
        shards.add(tuple(header["shard"]))
        if header.get("rows") != len(df):
            raise InputError(part, f"computed on {header.get('rows')} rows, but {cfg.data} has {len(df)}")
        results.update(read_results(part) or {})
    if len(runs) != 1:
        raise KitError(f"shard files come from different runs (settings or inputs differ): {sorted(runs)}")
    n = next(iter(shards))[1]
    missing = sorted(set(range(n)) - {s[0] for s in shards})
    if missing:
        log.warning("merge: shards %s of %d missing; their rows get the fallback", missing, n)
    outputs = outputs_from_results(comp, df, results, str(Path(cfg.data).parent))
    write_csv_atomic(comp.to_submission(df, outputs), cfg.out)
    return PredictResult(Path(cfg.out), len(df), len(results), len(df) - len(results), 0.0, 0.0)


def rehearse(cfg: RehearseConfig) -> dict:
    """Predict the inference time of a hidden test of cfg.rows rows from timings on rows like `data`'s."""
    from .budget import parse_duration
    from .infer.planner import fit_max_length, measure, predict_seconds, tile_lengths

    comp = competitions.get(cfg.competition)
    df = comp.read(cfg.data)
    pcfg = PredictConfig(
        cfg.competition,
        cfg.data,
        model=cfg.model,
        adapter=cfg.adapter,
        max_length=cfg.max_length,
        batch_tokens=cfg.batch_tokens,
        max_new_tokens=cfg.max_new_tokens,
        tta=cfg.tta,
        dtype=cfg.dtype,
        quant=cfg.quant,
        device=cfg.device,
    )
    check_tta(comp, cfg.tta)
    model, tok, task, batch_tokens = _load_task(pcfg, comp, df)
    tp = measure(task.step, task.lengths, batch_tokens, steps=task.steps)
    lengths = tile_lengths(task.lengths, cfg.rows)
    seconds = predict_seconds(lengths, batch_tokens, tp, task.steps) / cfg.workers
    report = {
        "rows": cfg.rows,
        "mean_tokens": sum(lengths) / len(lengths),
        "predicted_s": seconds,
        "throughput": {int(k): 1.0 / v for k, v in zip(tp.lengths, tp.sec_per_token)},
    }
    budget = parse_duration(cfg.budget)
    if budget:
        report["budget_s"] = budget
        report["fits"] = seconds <= budget
        if seconds > budget:
            report["max_length_to_fit"], _ = fit_max_length(
                lengths, batch_tokens, tp, budget * cfg.workers, cfg.max_length, steps=task.steps
            )
    return report


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
        from .embed import scorer

        kw["embed"] = scorer(cfg.embedder, cfg.scs_max_tokens, cfg.scs_special_tokens_as_text)
    return comp.score(sub, truth, **kw)


def validate(cfg: ValidateConfig) -> list[str]:
    """Every problem with a submission; an empty list means it is valid."""
    comp = competitions.get(cfg.competition)
    ids = comp.read(cfg.test)[comp.id_column].tolist() if cfg.test else None
    if not Path(cfg.submission).is_file():
        raise InputError(cfg.submission, "file not found")
    return competitions.check_submission(comp, cfg.submission, ids)
