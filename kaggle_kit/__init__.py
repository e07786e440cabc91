"""kaggle_kit: prompt templates, QLoRA training and time-budgeted inference for LLM Kaggle competitions.

Importing the package loads no torch: the public functions below are imported on first use.
"""

from __future__ import annotations

import importlib
import logging
import warnings

__version__ = "0.1.0"

# bitsandbytes warns at import, on every CPU run, that it could not fetch a faster 4-bit kernel from the
# hub (the `kernels` package: no hub at run time). Its own CPU path gives the same numbers; docs/training.md
# says so once. Set before anything imports bitsandbytes (peft and transformers may, indirectly).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


class _OfflineTrustNote(logging.Filter):
    """Drops the `kernels` package's warning that it skipped a publisher check because the hub is offline
    (kernels 0.19, pulled in by transformers 5.25: bitsandbytes asks it for the same hub kernel as above).
    The kit runs offline by design; its other warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Skipping publisher trust check")


logging.getLogger("kernels._internals.hf_hub").addFilter(_OfflineTrustNote())
# Importing bitsandbytes compiles a kernel with torch.compile, whose inductor imports torch.utils.mkldnn,
# which still uses torch.jit.script_method: torch warns about its own code, nothing a user can change.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script_method` is deprecated", category=DeprecationWarning)

# public name -> module that defines it
_EXPORTS = {
    "KitError": "errors",
    "ConfigError": "errors",
    "InputError": "errors",
    "ModelNotFound": "errors",
    "Deadline": "budget",
    "PredictConfig": "config",
    "ScoreConfig": "config",
    "ValidateConfig": "config",
    "predict": "jobs",
    "predict_config": "jobs.notebook",
    "train": "jobs",
    "TrainConfig": "config",
    "score": "jobs",
    "validate": "jobs",
    "PredictResult": "jobs",
    "COMPETITIONS": "competitions",
    "map_at_k": "metrics",
    "log_loss": "metrics",
    "sharpened_cosine_similarity": "metrics",
    "perplexity": "metrics",
    "load_model": "models",
    "resolve_model": "models",
    "demo_model_dir": "models",
    "detect": "hardware",
    "score_choices": "infer",
    "generate": "infer",
    "load_embedder": "embed",
    "run_demo": "jobs.demo",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'kaggle_kit' has no attribute {name!r}")
