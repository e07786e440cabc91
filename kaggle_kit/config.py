"""Dataclass configs: YAML keys, CLI flags and Python arguments are spellings of these fields."""
from __future__ import annotations

from dataclasses import dataclass, fields

from .budget import parse_duration
from .errors import ConfigError


def _check_positive(obj, *names):
    for name in names:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            raise ConfigError(name, f"must be > 0, got {value}")


@dataclass
class PredictConfig:
    """One prediction run: a competition's test file in, a submission CSV out."""

    competition: str  # a key of kaggle_kit.competitions.COMPETITIONS
    data: str  # the competition's test.csv (a labelled train.csv works too; labels are ignored)
    model: str = "demo"  # a local model folder, or 'demo' (SmolLM2-135M-Instruct)
    adapter: str | None = None  # a peft LoRA adapter folder, applied unmerged
    out: str = "submission.csv"  # written atomically; a complete fallback version first
    budget: str | None = None  # wall clock for the whole run, e.g. '9h'; rows left over get the fallback
    max_length: int = 2048  # prompt tokens kept (left-truncated); 2k fits a 9B 4-bit model on a T4
    batch_tokens: int | None = None  # padded tokens per batch; None = hardware profile (GPU 16k, CPU 2k)
    max_new_tokens: int | None = None  # generation length; None = the competition's default
    temperature: float = 1.0  # divides choice logits (seed 001 used 1.03 for LMSYS)
    dtype: str | None = None  # float16 / bfloat16 / float32; None = hardware profile (T4: float16)
    device: str | None = None  # cpu / cuda; None = cuda when present
    progress: bool = True  # progress bar with rate and ETA
    workers: int = 1  # processes over shards of the rows; one per GPU (Kaggle T4 x2: 2)
    shard: str | None = None  # 'I/N': compute shard I of N into `out` (a results file for `merge`)
    checkpoint: str | None = None  # resumable results file; None = '<out>.ckpt.jsonl'
    plan: bool = True  # with a budget: measure throughput, predict the run, lower max_length to fit

    def __post_init__(self):
        _check_positive(self, "max_length", "batch_tokens", "max_new_tokens", "temperature", "workers")
        parse_duration(self.budget, "budget")
        if self.shard is not None:
            parse_shard(self.shard)
            if self.workers != 1:
                raise ConfigError("workers", "use either --shard or --workers, not both")

    def shard_tuple(self) -> tuple[int, int]:
        """(I, N) from 'I/N'; (0, 1) when not sharded."""
        return parse_shard(self.shard) if self.shard else (0, 1)

    def checkpoint_path(self) -> str:
        """Where finished batches are kept: `checkpoint`, the shard file itself, or '<out>.ckpt.jsonl'."""
        if self.shard:
            return self.out
        return self.checkpoint or f"{self.out}.ckpt.jsonl"


def parse_shard(text: str) -> tuple[int, int]:
    """'0/2' -> (0, 2); shards count from 0."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError("shard", f"{text!r} is not I/N (e.g. 0/2)") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError("shard", f"{text!r}: need 0 <= I < N")
    return i, n


@dataclass
class ScoreConfig:
    """Score a submission against a labelled file."""

    competition: str  # a key of COMPETITIONS
    submission: str  # submission CSV
    truth: str  # labelled CSV with the competition's answer columns
    embedder: str | None = None  # SCS only: 'minilm' or a sentence-transformers folder (sentence-t5-base)


@dataclass
class MergeConfig:
    """Join shard results (`predict --shard I/N`) into one submission."""

    competition: str  # a key of COMPETITIONS
    data: str  # the test.csv the shards were computed on
    parts: list[str]  # shard result files
    out: str = "submission.csv"  # written atomically


@dataclass
class RehearseConfig:
    """Predict the runtime of a hidden test set of `rows` rows like those in `data`."""

    competition: str  # a key of COMPETITIONS
    data: str  # rows like the hidden test's (the public test or train file)
    rows: int = 25000  # hidden test size (LMSYS ~25k, Science Exam ~4k, Prompt Recovery ~1.4k)
    model: str = "demo"  # as in PredictConfig
    adapter: str | None = None
    budget: str | None = "9h"  # Kaggle's limit for code competitions
    max_length: int = 2048
    batch_tokens: int | None = None
    max_new_tokens: int | None = None
    workers: int = 1  # the run's workers (GPUs); the time divides among them
    dtype: str | None = None
    device: str | None = None

    def __post_init__(self):
        _check_positive(self, "rows", "max_length", "batch_tokens", "max_new_tokens", "workers")
        parse_duration(self.budget, "budget")


@dataclass
class ValidateConfig:
    """Check a submission's format (and, given the test file, that every id appears once)."""

    competition: str  # a key of COMPETITIONS
    submission: str  # submission CSV
    test: str | None = None  # the test.csv whose ids must all appear


def from_dict(cls, values: dict):
    """A config from a dict (YAML or --set pairs); unknown keys raise ConfigError naming them."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(unknown[0], f"unknown field for {cls.__name__}; valid: {sorted(known)}")
    return cls(**values)
