"""Several models on one test file: weighted ensembles and the confidence cascade.

Each member runs in its own process (spawned), so the GPU memory of one model is really free before
the next loads; each keeps its own resumable checkpoint, so a killed run resumes member by member.
Choice tasks average the members' probabilities with fitted weights, then a temperature; generation
tasks join the members' texts (Prompt Recovery's winners concatenated several guesses).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError

log = logging.getLogger("kaggle_kit")
RANKED = ("multiple_choice", "label_probabilities")  # task types whose outputs are label probabilities


@dataclass
class Member:
    """One model of an ensemble: a base model and/or adapter, with its own inference settings."""

    name: str
    model: str | None = "demo"  # a local model folder, 'demo', or None = the adapter's base
    adapter: str | None = None
    tta: int = 1
    max_length: int | None = None  # None = the run's max_length
    quant: str | None = None  # nf4 / int8 / none; None = as the adapter trained


@dataclass
class EnsembleSpec:
    """An ensemble file (YAML): members, their weights and the temperature over the weighted mean."""

    members: list[Member]
    weights: dict[str, float] = field(default_factory=dict)  # name -> weight; missing = equal weights
    temperature: float = 1.0  # applied to the weighted mean of the members' probabilities
    fitted: dict = field(default_factory=dict)  # what `kaggle-kit ensemble` measured when fitting

    def weight_vector(self) -> np.ndarray:
        """Weights in member order, summing to 1."""
        w = np.array([float(self.weights.get(m.name, 1.0)) for m in self.members])
        return w / w.sum()


def load_spec(path) -> EnsembleSpec:
    """An EnsembleSpec from YAML; a bad field is named (members[1].adapter, weights.fold2, ...)."""
    from ..config import read_yaml_mapping

    raw = read_yaml_mapping(path, "ensemble")
    if not isinstance(raw.get("members"), list) or not raw["members"]:
        raise ConfigError("ensemble", f"{path} needs 'members:', a list of {{name, model, adapter, tta}}")
    unknown = sorted(set(raw) - {f.name for f in fields(EnsembleSpec)})
    if unknown:
        raise ConfigError(f"ensemble.{unknown[0]}", "unknown field; valid: members, weights, temperature, fitted")
    known = {f.name for f in fields(Member)}
    members = []
    for i, m in enumerate(raw["members"]):
        if not isinstance(m, dict) or not m.get("name"):
            raise ConfigError(f"members[{i}].name", "every member needs a name")
        bad = sorted(set(m) - known)
        if bad:
            raise ConfigError(f"members[{i}].{bad[0]}", f"unknown field; valid: {sorted(known)}")
        members.append(Member(**m))
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ConfigError("members", f"member names repeat: {names}")
    weights = raw.get("weights") or {}
    for name, w in weights.items():
        if name not in names:
            raise ConfigError(f"weights.{name}", f"no member called {name!r}; members: {names}")
        if not isinstance(w, (int, float)) or w < 0:
            raise ConfigError(f"weights.{name}", f"must be a number >= 0, got {w!r}")
    if weights and sum(float(weights.get(n, 1.0)) for n in names) <= 0:
        raise ConfigError("weights", "all weights are 0")
    t = raw.get("temperature", 1.0)
    if not isinstance(t, (int, float)) or t <= 0:
        raise ConfigError("temperature", f"must be > 0, got {t!r}")
    return EnsembleSpec(members, {k: float(v) for k, v in weights.items()}, float(t), raw.get("fitted") or {})


def save_spec(spec: EnsembleSpec, path) -> Path:
    """Write the spec as YAML (atomically)."""
    import yaml

    from ..io import write_text_atomic

    data = {
        "members": [{k: v for k, v in asdict(m).items() if v is not None} for m in spec.members],
        "weights": {k: round(v, 6) for k, v in spec.weights.items()},
        "temperature": round(spec.temperature, 6),
        "fitted": spec.fitted,
    }
    write_text_atomic(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), path)
    return Path(path)


def _member_process(cfg, seconds_left: float | None, gpu: int | None = None, threads: int | None = None) -> dict:
    """In a fresh process: one member's predictions into its checkpoint file (see jobs._worker), on GPU
    `gpu` alone when given (T4 x2: two members at once). Its stats say which device it saw and when it ran."""
    import time

    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    os.environ["KAGGLE_KIT_WORKER_GPUS"] = "0"  # the device is chosen above, not by a shard index
    from .work import _worker

    started = time.time()
    stats = _worker(cfg, (0, 1), seconds_left, threads or os.cpu_count() or 1)
    gpu_seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    return {**stats, "gpu": gpu_seen, "started": started, "finished": time.time()}


def run_member(cfg, seconds_left: float | None):
    """Run one PredictConfig in its own spawned process; (results {row: output}, stats dict)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from ..infer.checkpoint import read_results

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        stats = pool.submit(_member_process, cfg, seconds_left).result()
    return read_results(cfg.checkpoint_path()) or {}, stats


def member_config(cfg, member: Member, data: str, checkpoint: str):
    """The PredictConfig a member runs with: the run's settings, the member's model, its own checkpoint."""
    return replace(
        cfg,
        data=data,
        model=member.model,
        adapter=member.adapter,
        tta=member.tta,
        quant=member.quant,
        max_length=member.max_length or cfg.max_length,
        temperature=1.0,  # the ensemble's own temperature is applied to the mean
        checkpoint=checkpoint,
        ensemble=None,
        cascade_model=None,
        cascade_adapter=None,
        cascade_dtype=None,
        workers=1,
        shard=None,
    )


def combine(comp, outputs: list, weights: np.ndarray, temperature: float = 1.0):
    """Members' outputs -> one: weighted mean of probabilities over the members that have the row, then
    the temperature (label probabilities); the members' texts joined in member order (generate_text); all
    members' solutions pooled for one vote (generate_answer)."""
    from ..metrics import apply_temperature

    rows = range(len(outputs[0]))
    if comp.kind == "generate_text":
        return [" ".join(o[i] for o in outputs if o[i]) or None for i in rows]
    if comp.kind == "generate_answer":
        pooled = [[t for o in outputs for t in ([o[i]] if isinstance(o[i], str) else o[i] or [])] for i in rows]
        return [texts or None for texts in pooled]
    if comp.kind not in RANKED:
        raise ConfigError("ensemble", f"{comp.name} is {comp.kind}: its members' rankings cannot be combined")
    stack = np.stack([np.asarray(o, dtype=float) for o in outputs])  # (M, N, K); NaN rows = not reached
    have = ~np.isnan(stack).any(axis=2)  # (M, N)
    w = weights[:, None] * have
    total = w.sum(axis=0)
    mean = np.einsum("mn,mnk->nk", w, np.nan_to_num(stack)) / np.where(total > 0, total, 1.0)[:, None]
    mean[total == 0] = np.nan
    done = total > 0
    if temperature != 1.0 and done.any():
        mean[done] = apply_temperature(mean[done], temperature)
    return mean


def fit_weights(y, probs: list) -> np.ndarray:
    """Weights on the simplex minimising the log loss of the weighted mean of `probs` (each (N, K))."""
    return weights_fit(y, probs)["weights"]


def weights_fit(y, probs: list) -> dict:
    """scipy's SLSQP on the simplex (weights >= 0 summing to 1) minimising the log loss of the weighted
    mean: {'weights', 'converged', 'message'}; the loss is convex in the weights."""
    from scipy.optimize import minimize

    from ..metrics import LOG_LOSS_EPS

    y = np.asarray(y)
    p = np.stack([np.asarray(q, dtype=np.float64)[np.arange(len(y)), y] for q in probs], axis=1)  # (N, M)
    p = np.clip(p, LOG_LOSS_EPS, 1.0)
    m = p.shape[1]
    res = minimize(
        lambda w: -np.mean(np.log(np.clip(p @ w, LOG_LOSS_EPS, None))),
        np.full(m, 1.0 / m),
        jac=lambda w: -(p / np.clip(p @ w, LOG_LOSS_EPS, None)[:, None]).mean(axis=0),
        method="SLSQP",
        bounds=[(0.0, 1.0)] * m,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(m)}],
        options={"ftol": 1e-12, "maxiter": 500},
    )
    w = np.clip(res.x, 0.0, None)
    if not res.success:
        log.warning("ensemble weights: the solver did not converge (%s)", res.message)
    return {"weights": w / w.sum(), "converged": bool(res.success), "message": str(res.message)}


def predict_members(cfg, comp, df, deadline):
    """Every member of cfg.ensemble on cfg.data, one process each; (combined outputs, stats, checkpoints).

    With several GPUs the members run side by side, one per GPU (T4 x2: two at a time), else one after
    another. The budget left is shared among the rounds still to run, so the last member is never starved.
    """
    import math
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from ..infer.checkpoint import read_results
    from .work import _gpu_count, sum_stats

    if comp.kind == "rank_candidates":
        raise ConfigError("ensemble", f"{comp.name} ranks catalogue items: its members' rankings cannot be combined")
    spec = load_spec(cfg.ensemble)
    base = cfg.checkpoint_path()
    gpus = _gpu_count()
    slots = max(1, gpus)
    configs = [member_config(cfg, m, cfg.data, f"{base}.{m.name}") for m in spec.members]
    outputs, rounds, members = [], [], []
    for start in range(0, len(configs), slots):
        group = configs[start : start + slots]
        rounds_left = math.ceil((len(configs) - start) / slots)
        seconds = None if deadline.seconds is None else deadline.remaining() / rounds_left
        threads = max(1, (os.cpu_count() or 1) // len(group))
        log.info("ensemble: members %s side by side", [spec.members[start + k].name for k in range(len(group))])
        with ProcessPoolExecutor(len(group), mp_context=mp.get_context("spawn")) as pool:
            futures = [
                pool.submit(_member_process, c, seconds, k if gpus else None, threads) for k, c in enumerate(group)
            ]
            rounds.append([f.result() for f in futures])
        outputs += [_ordered(comp, df, read_results(c.checkpoint_path()) or {}) for c in group]
        members += [{"name": spec.members[start + k].name, **st} for k, st in enumerate(rounds[-1])]
    combined = combine(comp, outputs, spec.weight_vector(), spec.temperature)
    stats = sum_stats([sum_stats(r, parallel=True) for r in rounds], parallel=False)
    stats["members"] = [
        {k: m[k] for k in ("name", "gpu", "rows_done", "seconds", "started", "finished")} for m in members
    ]
    return combined, stats, [c.checkpoint_path() for c in configs]


def _ordered(comp, df, results: dict):
    from .work import outputs_from_results

    return outputs_from_results(comp, df.reset_index(drop=True), results)


def least_confident(probs, fraction: float) -> list[int]:
    """Row indices of the `fraction` of rows with the smallest margin between the two most probable
    labels (rows without probabilities first), in row order."""
    p = np.asarray(probs, dtype=float)
    top2 = -np.sort(-np.nan_to_num(p, nan=-1.0), axis=1)[:, :2]
    margin = np.where(np.isnan(p).any(axis=1), -np.inf, top2[:, 0] - top2[:, 1])
    n = int(round(fraction * len(p)))
    return sorted(np.argsort(margin, kind="stable")[:n].tolist())


def cascade(cfg, comp, df, probs, deadline):
    """Re-answer the least confident cfg.cascade_fraction of rows with the second model (5th place in
    Science Exam: 7B on all, 70B on the least confident 40%). Rows the budget does not reach keep the
    first model's answer. Returns (probs, rows re-answered, checkpoint file)."""
    from ..io import read_text_csv, write_csv_atomic

    if comp.kind not in RANKED:
        raise ConfigError("cascade_model", f"the cascade re-ranks label probabilities; {comp.name} is {comp.kind}")
    rows = least_confident(probs, cfg.cascade_fraction)
    _free_cuda()  # the first model's cached blocks, before the second loads in its own process
    if not rows:
        return probs, 0, []
    base = cfg.checkpoint_path()
    subset = f"{base}.cascade.csv"
    # The rows' cells as the test file has them (df holds parsed values: LMSYS's JSON lists as Python
    # lists); the same rows on a rerun, whose first-stage results are resumed.
    write_csv_atomic(read_text_csv(cfg.data).iloc[rows], subset)
    if cfg.cascades_same_model():  # e.g. bf16 near-ties re-checked in fp32
        member = Member("cascade", cfg.model, cfg.adapter, cfg.tta, quant=cfg.quant)
    else:
        member = Member("cascade", cfg.cascade_model, cfg.cascade_adapter, cfg.tta, quant=cfg.quant)
    mcfg = member_config(cfg, member, subset, f"{base}.cascade")
    # Unlike an ensemble member's, the cascade's probabilities replace the first pass's as they are: the
    # run's temperature (or the adapter's calibration) applies to them too.
    mcfg = replace(mcfg, temperature=cfg.temperature, dtype=cfg.cascade_dtype or cfg.dtype)
    seconds = None if deadline.seconds is None else deadline.remaining()
    log.info(
        "cascade: %d least confident rows to %s (%s)",
        len(rows),
        "the same model" if cfg.cascades_same_model() else cfg.cascade_model or cfg.cascade_adapter,
        mcfg.dtype or "the profile's dtype",
    )
    results, _ = run_member(mcfg, seconds)
    second = _ordered(comp, df.iloc[rows], results)
    out = np.array(probs, dtype=float, copy=True)
    redone = 0
    for j, i in enumerate(rows):
        if not np.isnan(second[j]).any():
            out[i] = second[j]
            redone += 1
    return out, redone, [mcfg.checkpoint_path(), subset]


def _free_cuda() -> None:
    import gc

    from ..infer.engine import free_cuda_cache

    gc.collect()
    free_cuda_cache()


def fit(cfg) -> EnsembleSpec:
    """Run every member on a labelled validation file, fit the weights and the temperature that minimise
    log loss there, and write them into the ensemble file (`kaggle-kit ensemble`)."""
    from .. import competitions
    from ..config import PredictConfig
    from ..metrics import log_loss, temperature_fit

    comp = competitions.get(cfg.competition)
    if comp.kind not in RANKED:
        raise ConfigError("competition", f"weights are fitted on label probabilities; {comp.name} has none")
    spec = load_spec(cfg.ensemble)
    truth = comp.read(cfg.truth, labelled=True)
    y = comp.targets(truth)
    pcfg = PredictConfig(
        cfg.competition, cfg.truth, out=cfg.work, max_length=cfg.max_length, progress=cfg.progress, plan=False
    )
    probs, per_member = [], {}
    for member in spec.members:
        results, _ = run_member(member_config(pcfg, member, cfg.truth, f"{cfg.work}.{member.name}"), None)
        p = _ordered(comp, truth, results)
        if np.isnan(p).any():
            raise InputError(cfg.truth, f"member {member.name!r} left rows without predictions")
        probs.append(p)
        per_member[member.name] = log_loss(y, p)
    wfit = weights_fit(y, probs)
    w = wfit["weights"]
    mean = combine(comp, probs, w)
    tfit = temperature_fit(y, mean)
    t = tfit["temperature"]
    spec.weights = {m.name: float(x) for m, x in zip(spec.members, w)}
    spec.temperature = t
    spec.fitted = {
        "on": str(cfg.truth),
        "rows": len(y),
        "log_loss_members": {k: round(v, 6) for k, v in per_member.items()},
        "log_loss_equal_weights": round(log_loss(y, combine(comp, probs, np.full(len(probs), 1 / len(probs)))), 6),
        "log_loss_fitted": round(log_loss(y, combine(comp, probs, w, t)), 6),
        "weights_converged": wfit["converged"],
        "temperature_converged": tfit["converged"] and not tfit["at_bound"],
        "notes": [x["message"] for x in (wfit, tfit) if not x["converged"] or x.get("at_bound")],
    }
    save_spec(spec, cfg.out or cfg.ensemble)
    for f in Path(cfg.work).parent.glob(Path(cfg.work).name + ".*"):
        f.unlink(missing_ok=True)
    return spec
