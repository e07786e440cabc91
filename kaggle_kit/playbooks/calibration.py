"""Temperature calibration: fit T on a validation split (kaggle-kit calibrate), save it with the adapter,
and find it again at predict time."""

from __future__ import annotations

import logging
from pathlib import Path

from .. import competitions
from ..config import CalibrateConfig
from ..errors import ConfigError, InputError

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

    from ..io import read_submission, write_json_atomic
    from ..metrics import apply_temperature, log_loss, temperature_fit

    comp = competitions.get(cfg.competition)
    if comp.kind != "label_probabilities" or comp.settings.output != "columns":
        raise ConfigError(
            "competition", f"{comp.name}: calibration needs a probability column per class (label_probabilities)"
        )
    truth = comp.read(cfg.truth, labelled=True)
    problems = competitions.check_submission(comp, cfg.submission, truth[comp.id_column].tolist())
    if problems:
        raise InputError(cfg.submission, "invalid submission: " + "; ".join(problems[:5]))
    sub = comp.aligned(read_submission(cfg.submission), truth)
    probs = sub[list(comp.class_names)].astype(float).to_numpy()
    y = comp.targets(truth)
    fit = temperature_fit(y, probs)
    res = {
        **fit,
        "rows": len(y),
        "log_loss_before": log_loss(y, probs),
        "log_loss_after": log_loss(y, apply_temperature(probs, fit["temperature"])),
    }
    if fit["at_bound"] or not fit["converged"]:
        log.warning("calibration: %s", fit["message"])
    if cfg.adapter:
        if not (Path(cfg.adapter) / "adapter_config.json").is_file():
            raise InputError(cfg.adapter, "not an adapter folder (no adapter_config.json)")
        write_json_atomic({**res, "fitted_on": str(cfg.truth)}, Path(cfg.adapter) / "calibration.json")
        res["saved"] = str(Path(cfg.adapter) / "calibration.json")
    log.info("calibration: %s", json.dumps(res))
    return res
