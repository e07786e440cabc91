"""The configs of the jobs on a test file: predict, merge, rehearse, score, validate, calibrate, ensemble."""

from __future__ import annotations

from dataclasses import dataclass

from ..budget import parse_duration
from ..errors import ConfigError
from ..hardware import DTYPES, QUANTS
from .base import CHAT_FORMAT_NAMES, _check_positive, check_template_kwargs, parse_shard


@dataclass
class PredictConfig:
    """One prediction run: a competition's test file in, a submission CSV out."""

    competition: str  # a key of kaggle_kit.competitions.COMPETITIONS, or the path of a spec file
    data: str  # the competition's test.csv (a labelled train.csv works too; labels are ignored)
    model: str | None = "demo"  # a local model folder, 'demo' (SmolLM2-135M-Instruct), or None = the adapter's base
    adapter: str | None = None  # a peft LoRA adapter folder (e.g. runs/train/best), applied unmerged
    out: str = "submission.csv"  # written atomically; a complete fallback version first
    budget: str | None = None  # wall clock for the whole run, e.g. '9h'; rows left over get the fallback
    max_length: int = 2048  # prompt tokens kept (left-truncated); 2k fits a 9B 4-bit model on a T4
    batch_tokens: int | None = None  # padded tokens per batch; None = GPU 16k, CPU 2k (4k to generate)
    max_new_tokens: int | None = None  # generation length; None = the competition's default
    temperature: float | None = None  # divides choice logits; None = the adapter's calibration.json, else 1.0
    tta: int = 1  # views per row: science_exam up to 5 option orders, lmsys 2 (A/B swapped); time x tta
    shots: int = 0  # science_exam: solved examples before each question (a Science Exam QLoRA repo used 5)
    shots_file: str | None = None  # labelled CSV the shots come from, balanced over the answer letters
    mean_prompt: str | None = None  # prompt_recovery: a text file (kaggle-kit mean-prompt) for the fallback row
    append_mean_prompt: bool = False  # prompt_recovery: also append that text to every prediction
    context: str | None = None  # science_exam: passage file (CSV/parquet) to retrieve context from
    context_column: str = "text"  # the passage file's text column
    context_k: int = 3  # passages retrieved per question
    context_tokens: int = 512  # LLM tokens of context per question (passages kept in rank order)
    embedder: str | None = None  # retrieval embedder: 'minilm' or a sentence-transformers folder
    ensemble: str | None = None  # ensemble YAML (members, weights, temperature): each member in its own process
    cascade_model: str | None = None  # a second (larger) model re-answering the least confident rows
    cascade_adapter: str | None = None  # the second model's adapter (or the cascade's only change)
    cascade_fraction: float = 0.4  # share of rows re-answered (Science Exam's 5th place: 40%)
    cascade_dtype: str | None = None  # the second pass's dtype; alone: the same model (float32 re-checks)
    dtype: str | None = None  # float16 / bfloat16 / float32; None = hardware profile (T4: float16)
    quant: str | None = None  # base weights nf4 / int8 / none (a 9B model on a T4: nf4); None = as the adapter trained
    chat_format: str | None = None  # auto / alpaca / plain; None = as the adapter was trained, else auto
    chat_template_kwargs: dict | None = None  # {enable_thinking: false} (Qwen3); None = as the adapter was trained
    device: str | None = None  # cpu / cuda; None = cuda when present
    backend: str = "transformers"  # 'vllm' (GPU + vllm installed), or 'auto' = vllm when it can run
    tensor_parallel: int = 1  # vllm: GPUs one model is split over (a model larger than one GPU)
    progress: bool = True  # progress bar with rate and ETA
    workers: int = 1  # processes over shards of the rows; one per GPU (Kaggle T4 x2: 2)
    shard: str | None = None  # 'I/N': compute shard I of N into `out` (a results file for `merge`)
    checkpoint: str | None = None  # resumable results file; None = '<out>.ckpt.jsonl'
    plan: bool = True  # with a budget: measure throughput, predict the run, lower max_length to fit
    fast_paths: bool = True  # off: compute as plain transformers (no prefix cache, pruning, CPU kernels)
    limit_rows: int | None = None  # run the model on the first N rows only, the rest keep the fallback (smoke runs)

    def __post_init__(self):
        _check_positive(
            self,
            "max_length",
            "batch_tokens",
            "max_new_tokens",
            "temperature",
            "workers",
            "tta",
            "context_k",
            "limit_rows",
        )
        if self.quant is not None and self.quant not in QUANTS:
            raise ConfigError("quant", f"{self.quant!r} is not one of {list(QUANTS)}")
        if self.chat_format is not None and self.chat_format not in CHAT_FORMAT_NAMES:
            raise ConfigError("chat_format", f"{self.chat_format!r} is not one of {list(CHAT_FORMAT_NAMES)}")
        check_template_kwargs(self.chat_template_kwargs)
        if self.backend not in ("transformers", "vllm", "auto"):
            raise ConfigError("backend", f"{self.backend!r} is not one of ['transformers', 'vllm', 'auto']")
        _check_positive(self, "tensor_parallel")
        if self.tensor_parallel > 1 and (self.backend == "transformers" or self.workers > 1):
            raise ConfigError(
                "tensor_parallel",
                "only vLLM splits a model over GPUs (--backend vllm)" if self.backend == "transformers"
                else "--workers runs a whole model on each GPU; splitting one over GPUs needs --workers 1",
            )  # fmt: skip
        if not 0.0 < self.cascade_fraction <= 1.0:
            raise ConfigError("cascade_fraction", f"must be in (0, 1], got {self.cascade_fraction}")
        for name in ("dtype", "cascade_dtype"):
            if getattr(self, name) is not None and getattr(self, name) not in DTYPES:
                raise ConfigError(name, f"{getattr(self, name)!r} is not one of {list(DTYPES)}")
        if (self.ensemble or self.cascades()) and (self.workers > 1 or self.shard):
            raise ConfigError("ensemble", "ensembles and cascades run one model at a time: drop workers/shard")
        if self.context_tokens < 16:
            raise ConfigError("context_tokens", f"must be >= 16, got {self.context_tokens}")
        if self.shots < 0:
            raise ConfigError("shots", f"must be >= 0, got {self.shots}")
        if self.append_mean_prompt and not self.mean_prompt:
            raise ConfigError("append_mean_prompt", "needs mean_prompt: a text file made by `kaggle-kit mean-prompt`")
        if self.shots and not self.shots_file:
            raise ConfigError("shots_file", "shots > 0 needs a labelled file to take them from (e.g. train.csv)")
        parse_duration(self.budget, "budget")
        if self.shard is not None:
            parse_shard(self.shard)
            if self.workers != 1:
                raise ConfigError("workers", "use either --shard or --workers, not both")

    def cascades(self) -> bool:
        """Whether a second pass re-answers the least confident rows (another model, adapter or dtype)."""
        return bool(self.cascade_model or self.cascade_adapter or self.cascade_dtype)

    def cascades_same_model(self) -> bool:
        """Whether the cascade changes only the dtype: the run's own model and adapter answer again."""
        return bool(self.cascade_dtype) and not (self.cascade_model or self.cascade_adapter)

    def shard_tuple(self) -> tuple[int, int]:
        """(I, N) from 'I/N'; (0, 1) when not sharded."""
        return parse_shard(self.shard) if self.shard else (0, 1)

    def checkpoint_path(self) -> str:
        """Where finished batches are kept: `checkpoint`, the shard file itself, or '<out>.ckpt.jsonl'."""
        if self.shard:
            return self.out
        return self.checkpoint or f"{self.out}.ckpt.jsonl"


@dataclass
class MergeConfig:
    """Join shard results (`predict --shard I/N`) into one submission."""

    competition: str  # a key of COMPETITIONS, or the path of a spec file
    data: str  # the test.csv the shards were computed on
    parts: list[str]  # shard result files
    out: str = "submission.csv"  # written atomically
    mean_prompt: str | None = None  # prompt_recovery: as in PredictConfig (the shards' runs do not apply it)
    append_mean_prompt: bool = False


@dataclass
class RehearseConfig:
    """Predict the runtime of a hidden test set of `rows` rows like those in `data`."""

    competition: str  # a key of COMPETITIONS, or the path of a spec file
    data: str  # rows like the hidden test's (the public test or train file)
    rows: int = 25000  # hidden test size (LMSYS ~25k, Science Exam ~4k, Prompt Recovery ~1.4k)
    model: str | None = "demo"  # as in PredictConfig
    adapter: str | None = None
    budget: str | None = "9h"  # Kaggle's limit for code competitions
    max_length: int = 2048
    batch_tokens: int | None = None
    max_new_tokens: int | None = None
    workers: int = 1  # the run's workers (GPUs); the time divides among them
    tta: int = 1  # views per row, as in PredictConfig (the time multiplies)
    backend: str = "transformers"  # as in PredictConfig: the rehearsal times the engine the run will use
    tensor_parallel: int = 1
    dtype: str | None = None
    quant: str | None = None  # as in PredictConfig
    device: str | None = None
    # what the run's prompts hold, as in PredictConfig: the rehearsal times the same prompts
    chat_format: str | None = None
    shots: int = 0
    shots_file: str | None = None
    context: str | None = None
    context_column: str = "text"
    context_k: int = 3
    context_tokens: int = 512
    embedder: str | None = None

    def __post_init__(self):
        _check_positive(self, "rows", "max_length", "batch_tokens", "max_new_tokens", "workers", "tta")
        parse_duration(self.budget, "budget")


@dataclass
class ScoreConfig:
    """Score a submission against a labelled file."""

    competition: str  # a key of COMPETITIONS, or the path of a spec file
    submission: str  # submission CSV
    truth: str  # labelled CSV with the competition's answer columns
    embedder: str | None = None  # SCS only: 'minilm' or a sentence-transformers folder (sentence-t5-base)
    scs_max_tokens: int | None = 128  # SCS only: input cut here (Kaggle's scorer: 128 tokens)
    scs_special_tokens_as_text: bool = True  # SCS only: '</s>' in a text is characters, as Kaggle's scorer read it

    def __post_init__(self):
        _check_positive(self, "scs_max_tokens")


@dataclass
class ValidateConfig:
    """Check a submission's format (and, given the test file, that every id appears once)."""

    competition: str  # a key of COMPETITIONS, or the path of a spec file
    submission: str  # submission CSV
    test: str | None = None  # the test.csv whose ids must all appear


@dataclass
class CalibrateConfig:
    """Fit the choice temperature on a validation split: a submission predicted at temperature 1 + labels."""

    competition: str  # a competition with probability outputs (lmsys)
    submission: str  # predictions for the labelled file, made with --temperature 1
    truth: str  # the labelled validation file
    adapter: str | None = None  # write calibration.json here; predict then uses it by default


@dataclass
class EnsembleConfig:
    """Fit an ensemble's weights and temperature on a labelled validation file."""

    competition: str  # a competition with label probabilities (science_exam, lmsys)
    ensemble: str  # ensemble YAML listing the members
    truth: str  # the labelled validation file every member predicts
    out: str | None = None  # where the fitted YAML goes; None = overwrite `ensemble`
    work: str = "runs/ensemble_fit"  # prefix of the members' temporary result files
    max_length: int = 2048
    progress: bool = True
