"""LoRA / QLoRA training: data preparation, the explicit fit() loop, self-describing checkpoints."""

from .loop import TrainResult, evaluate, fit, prepare_data, train

__all__ = ["TrainResult", "evaluate", "fit", "prepare_data", "train"]
