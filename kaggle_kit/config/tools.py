"""The configs of the playbook commands and the server: mean-prompt, perplexity, synth, serve."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..budget import parse_duration
from ..errors import ConfigError
from .base import _check_positive


@dataclass
class MeanPromptConfig:
    """Search the Prompt Recovery mean prompt for a set of known rewrite prompts."""

    prompts: str  # CSV holding the known rewrite prompts
    column: str = "rewrite_prompt"
    embedder: str | None = None  # the scorer's embedder: 'minilm' here, a sentence-t5-base folder on Kaggle
    max_words: int = 16
    restarts: int = 3
    vocab_size: int = 200  # most frequent words of the prompts searched over
    out: str = "mean_prompt.txt"
    scs_max_tokens: int | None = 128  # as the scorer: Kaggle's sentence-t5-base cut input at 128 tokens
    scs_special_tokens_as_text: bool = True  # as the scorer: Kaggle's read '</s>' as plain characters

    def __post_init__(self):
        _check_positive(self, "max_words", "restarts", "vocab_size", "scs_max_tokens")


@dataclass
class PerplexityConfig:
    """The NTU ADL homework's evaluation: mean per-example perplexity of the reference outputs of alpaca records."""

    data: str  # alpaca JSON/JSONL with instruction, optional input, output
    model: str | None = "demo"  # as in PredictConfig
    adapter: str | None = None  # a trained adapter: the 'tuned' row of zero-shot / few-shot / tuned
    shots: int = 0  # solved examples before each instruction
    shots_file: str | None = None  # alpaca file the shots come from (never the evaluated records)
    shots_category: str | None = None  # a record field the shots are balanced over (the NTU ADL homework)
    max_length: int = 1024
    batch_tokens: int | None = None
    seed: int = 0  # which shots are drawn
    budget: str | None = None
    dtype: str | None = None
    quant: str | None = None
    device: str | None = None
    progress: bool = True

    def __post_init__(self):
        _check_positive(self, "max_length", "batch_tokens")
        if self.shots < 0:
            raise ConfigError("shots", f"must be >= 0, got {self.shots}")
        if self.shots and not self.shots_file:
            raise ConfigError("shots_file", "shots > 0 needs an alpaca file to take them from")
        parse_duration(self.budget, "budget")


@dataclass
class SynthConfig:
    """Synthetic training rows from a local LLM: 'rewrites' (Prompt Recovery: original texts rewritten
    under known rewrite prompts) or 'essays' (LLM-Detect: essays written to the assignment prompts, the
    positives the official train set lacks)."""

    texts: str | None  # rewrites: CSV with the original texts; essays: unused (None)
    prompts: str  # rewrites: a text file (one per line) or a CSV column; essays: train_prompts.csv
    out: str = "runs/synthetic_train.csv"  # the competition's train file columns
    kind: str = "rewrites"  # 'rewrites' or 'essays'
    temperature: float = 0.9  # essays: sampled, so the essays of one prompt differ
    model: str | None = "demo"  # the rewriting model (a Prompt Recovery write-up planned Gemma-7b-it)
    adapter: str | None = None
    text_column: str = "original_text"
    prompt_column: str = "rewrite_prompt"  # when `prompts` is a CSV
    rows: int | None = None  # first N texts; None = all
    per_text: int = 1  # different prompts per text
    max_new_tokens: int = 256  # rewrite length
    max_length: int = 1024  # request tokens kept
    max_text_chars: int = 1500  # originals cut here, as the competition's examples cut them
    seed: int = 0  # which prompts go with which text
    budget: str | None = None
    dtype: str | None = None
    device: str | None = None
    progress: bool = True

    def __post_init__(self):
        _check_positive(self, "rows", "per_text", "max_new_tokens", "max_length", "max_text_chars", "temperature")
        parse_duration(self.budget, "budget")
        if self.kind not in ("rewrites", "essays"):
            raise ConfigError("kind", f"{self.kind!r} is not one of ['rewrites', 'essays']")
        if self.kind == "rewrites" and not self.texts:
            raise ConfigError("texts", "rewrites need a CSV of original texts (--texts)")


@dataclass
class ServeConfig:
    """The HTTP API (the NeurIPS 2023 LLM Efficiency Challenge's endpoints) over a model and named LoRA adapters."""

    model: str | None = "demo"  # a local model folder, 'demo', or None = the first adapter's base
    adapters: dict[str, str] = field(default_factory=dict)  # name -> adapter folder, all loaded side by side
    routes: str | None = None  # routes YAML (rules, embedding router, default); None = everything to 'base'
    host: str = "127.0.0.1"  # loopback: the API has no authentication
    port: int = 8080  # the challenge's evaluator talked to localhost:8080
    max_prompt_tokens: int = 2048  # longer prompts get HTTP 400 naming this limit
    max_new_tokens: int = 512  # cap on a request's max_new_tokens
    max_num_samples: int = 4  # cap on a request's num_samples
    max_batch: int = 8  # requests for one adapter decoded together
    max_queue: int = 256  # requests waiting beyond this get HTTP 503 (queued, never dropped silently)
    batch_wait_ms: float = 5.0  # how long the worker waits for more requests to fill a batch

    def __post_init__(self):
        _check_positive(
            self, "port", "max_prompt_tokens", "max_new_tokens", "max_num_samples", "max_batch", "max_queue"
        )
        if self.batch_wait_ms < 0:
            raise ConfigError("batch_wait_ms", f"must be >= 0, got {self.batch_wait_ms}")
        if "base" in self.adapters:
            raise ConfigError("adapter", "'base' names the model without adapters; pick another adapter name")
