"""Inference primitives on one engine: score_choices, generate, perplexity."""
from .engine import RunStats, encode, plan_batches, run_batches
from .primitives import generate, label_token_ids, perplexity, score_choices

__all__ = ["RunStats", "encode", "generate", "label_token_ids", "perplexity", "plan_batches", "run_batches",
           "score_choices"]
