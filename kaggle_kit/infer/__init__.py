"""Inference on one engine: score_choices, generate, perplexity (+ their Tasks, the planner)."""

from .engine import RunStats, encode, plan_batches, run_batches, shard_batches
from .primitives import (
    Task,
    choice_task,
    generate,
    generation_task,
    label_token_ids,
    perplexity,
    perplexity_task,
    run_task,
    score_choices,
)

__all__ = [
    "RunStats",
    "Task",
    "choice_task",
    "encode",
    "generate",
    "generation_task",
    "label_token_ids",
    "perplexity",
    "perplexity_task",
    "plan_batches",
    "run_batches",
    "run_task",
    "score_choices",
    "shard_batches",
]
