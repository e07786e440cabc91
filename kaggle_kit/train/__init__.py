"""The training engine: tokenised data (completion-only labels, length grouping), the model (4-bit or
plain base + LoRA), the explicit fit() loop and self-describing checkpoints. The job that feeds it a
competition's rows is kaggle_kit.jobs.train."""

from .loop import Split, TrainResult, evaluate, fit

__all__ = ["Split", "TrainResult", "evaluate", "fit"]
