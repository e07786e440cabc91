"""predict(cfg): a submission for a competition's test file that is complete at every moment; merge of
shards; rehearse (the runtime of a hidden test set)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import competitions
from ..budget import Deadline
from ..config import MergeConfig, PredictConfig, RehearseConfig
from ..errors import ConfigError, InputError, KitError
from ..io import write_csv_atomic
from .work import (
    _check_context,
    _check_labels,
    _load_task,
    _rows_with_output,
    _run_shard,
    _run_workers,
    _shots,
    check_tta,
    limited,
    outputs_from_results,
    padded,
)

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


def _check_cascade_dtype(cfg: PredictConfig) -> None:
    """A dtype cascade of the same model must change the dtype the run computes in, or it re-runs the
    same numbers; said before any model loads."""
    if not cfg.cascades_same_model():
        return
    from ..hardware import detect

    run = detect(cfg.dtype, cfg.device).dtype
    if detect(cfg.cascade_dtype, cfg.device).dtype == run:
        raise ConfigError("cascade_dtype", f"the run already computes in {run}; re-checking needs another dtype")


def predict(cfg: PredictConfig) -> PredictResult:
    """Read and check the test file, write a complete fallback submission, then predict and replace it.

    Rows the budget does not reach keep the competition's fallback row, so the output is always valid.
    A rerun after a kill resumes from the checkpoint file and writes the same bytes. `limit_rows` runs the
    model on the first rows only (a smoke run: Kaggle's commit pass), the others keep the fallback.
    """
    deadline = Deadline.parse(cfg.budget)
    comp = competitions.get(cfg.competition)
    df = comp.read(cfg.data)  # every cell checked before any model loads
    check_tta(comp, cfg.tta)
    _shots(comp, cfg, df)  # a bad shots file fails here too, not after the model loaded
    _check_context(comp, cfg)
    _check_cascade_dtype(cfg)
    if cfg.backend == "vllm":
        from ..infer import vllm_backend

        if vllm_backend.why_not():
            raise ConfigError("backend", f"vllm cannot run here: {vllm_backend.why_not()}; use --backend transformers")
    if cfg.shard is None:
        write_csv_atomic(_finish(comp, cfg, comp.fallback(df[comp.id_column].tolist(), df)), cfg.out)
        log.info("%s: %d rows read; fallback submission written to %s", comp.name, len(df), cfg.out)
    tok = _check_labels(comp, cfg, df)  # with the tokenizer alone, before the model loads
    rows_df = limited(df, cfg)
    outputs, stats, rows_done, max_length, planned, leftovers = _predict_rows(cfg, comp, rows_df, deadline, tok)
    outputs = padded(outputs, len(df))
    # the engine counts task items; rank_candidates has several (row, candidate) items per row
    per_row = len(rows_df) / max(comp.items(rows_df, str(Path(cfg.data).parent)), 1)
    rows_done = rows_done if cfg.ensemble or cfg.workers > 1 else round(rows_done * per_row)
    rows = len(df) if cfg.shard is None else round(stats["rows"] * per_row)
    if cfg.shard is None:
        write_csv_atomic(_finish(comp, cfg, comp.to_submission(df, outputs)), cfg.out)
        if rows_done == len(rows_df):  # complete: the checkpoint has served its purpose
            for path in leftovers:
                Path(path).unlink(missing_ok=True)
    ran = (stats["rows_done"] - stats["rows_resumed"]) * per_row
    result = PredictResult(
        Path(cfg.out), rows, rows_done, rows - rows_done, deadline.elapsed(),
        ran / stats["seconds"] if stats["seconds"] else 0.0, round(stats["rows_resumed"] * per_row), max_length,
        planned, stats,
    )  # fmt: skip
    log.info(
        "%s: %d rows, %d predicted (%d resumed), %d fallback, %.2f rows/s; inference %.1fs%s; total %.1fs",
        comp.name, result.rows, result.predicted, result.resumed, result.fallback, result.rows_per_s,
        stats["seconds"], f" (planned {planned:.1f}s)" if planned else "", result.seconds,
    )  # fmt: skip
    return result


def _predict_rows(cfg, comp, df, deadline, tok=None):
    """The model work of a run: an ensemble, worker processes or one shard (with `tok`, the tokenizer the
    label check read), then the cascade; (outputs, stats, rows with an output, max_length used, planned
    seconds, checkpoint files to clear)."""
    if cfg.ensemble:
        from .ensemble import predict_members

        outputs, stats, leftovers = predict_members(cfg, comp, df, deadline)
        rows_done, max_length, planned = _rows_with_output(outputs), cfg.max_length, None
    elif cfg.workers > 1:
        results, stats, max_length, planned, parts = _run_workers(cfg, len(df), deadline)
        outputs = outputs_from_results(comp, df, results, str(Path(cfg.data).parent))
        rows_done, leftovers = _rows_with_output(outputs), [p.checkpoint_path() for p in parts]
    else:
        outputs, st, max_length, planned = _run_shard(cfg, comp, df, deadline, cfg.shard_tuple(), tok)
        stats, rows_done, leftovers = asdict(st), st.rows_done, [cfg.checkpoint_path()]
    if cfg.cascades():
        from .ensemble import cascade

        outputs, stats["cascade_rows"], files = cascade(cfg, comp, df, outputs, deadline)
        leftovers += files
    return outputs, stats, rows_done, max_length, planned, leftovers


def merge(cfg: MergeConfig) -> PredictResult:
    """Join the shard files of `predict --shard I/N` into one submission (identical to a single run, with
    the mean prompt applied here as a single run applies it: a shard file holds the model's outputs only)."""
    from ..infer.checkpoint import read_header, read_results

    comp = competitions.get(cfg.competition)
    _mean_prompt_text(comp, cfg)  # a bad mean-prompt file fails before any shard is read
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
    write_csv_atomic(_finish(comp, cfg, comp.to_submission(df, outputs)), cfg.out)
    return PredictResult(Path(cfg.out), len(df), len(results), len(df) - len(results), 0.0, 0.0)


def rehearse(cfg: RehearseConfig) -> dict:
    """Predict the inference time of a hidden test of cfg.rows rows from timings on rows like `data`'s."""
    from ..budget import parse_duration
    from ..infer.planner import fit_max_length, measure, predict_seconds, tile_lengths

    comp = competitions.get(cfg.competition)
    df = comp.read(cfg.data)
    shape = ("model", "adapter", "max_length", "batch_tokens", "max_new_tokens", "tta", "dtype", "quant", "device")
    engine = ("backend", "tensor_parallel", "workers")  # workers: refused with tensor_parallel as predict does
    prompts = ("chat_format", "shots", "shots_file", "context", "context_column", "context_k", "context_tokens")
    pcfg = PredictConfig(
        cfg.competition, cfg.data, **{name: getattr(cfg, name) for name in (*shape, *engine, *prompts, "embedder")}
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
