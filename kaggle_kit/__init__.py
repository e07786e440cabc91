"""kaggle_kit: prompt templates, QLoRA training and time-budgeted inference for LLM Kaggle competitions.

Importing the package loads no torch: the public functions below are imported on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

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
