"""Temperature calibration: fit T on a validation split (kaggle-kit calibrate), save it with the adapter,
and find it again at predict time."""

from __future__ import annotations

import logging
from pathlib import Path

from . import competitions
from .config import CalibrateConfig
from .errors import ConfigError, InputError

log = logging.getLogger("kaggle_kit")


def temperature(cfg) -> float:
    """cfg.temperature, else the one fitted into the adapter's calibration.json (kaggle-kit calibrate), else 1."""
    if cfg.temperature is not None:
        return cfg.temperature
    cal = Path(cfg.adapter) / "calibration.json" if cfg.adapter else None
    if cal is not None and cal.is_file():
        import json

        t = float(json.loads(cal.read_text())["temperature"])
        log.info("temperature %.3f from %s", t, cal)
        return t
    return 1.0


def calibrate(cfg: CalibrateConfig) -> dict:
    """Fit the temperature that minimises log loss on a labelled validation file; save it with the adapter."""
    import json

    import pandas as pd

    from .competitions.base import aligned
    from .io import write_json_atomic
    from .metrics import apply_temperature, fit_temperature, log_loss

    comp = competitions.get(cfg.competition)
    if comp.task != "choices" or len(comp.submission_columns) - 1 != len(comp.labels):  # one column per label
        raise ConfigError("competition", "temperature calibration needs probability submissions (lmsys)")
    truth = comp.read(cfg.truth, labelled=True)
    problems = competitions.check_submission(comp, cfg.submission, truth["id"].tolist())
    if problems:
        raise InputError(cfg.submission, "invalid submission: " + "; ".join(problems[:5]))
    sub = aligned(pd.read_csv(cfg.submission, dtype=str, keep_default_na=False), truth)
    cols = list(comp.submission_columns[1:])
    probs = sub[cols].astype(float).to_numpy()
    y = truth[cols].astype(int).to_numpy().argmax(axis=1)
    t = fit_temperature(y, probs)
    res = {
        "temperature": t,
        "rows": len(y),
        "log_loss_before": log_loss(y, probs),
        "log_loss_after": log_loss(y, apply_temperature(probs, t)),
    }
    if cfg.adapter:
        if not (Path(cfg.adapter) / "adapter_config.json").is_file():
            raise InputError(cfg.adapter, "not an adapter folder (no adapter_config.json)")
        write_json_atomic({**res, "fitted_on": str(cfg.truth)}, Path(cfg.adapter) / "calibration.json")
        res["saved"] = str(Path(cfg.adapter) / "calibration.json")
    log.info("calibration: %s", json.dumps(res))
    return res
