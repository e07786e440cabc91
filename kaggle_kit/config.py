"""Dataclass configs: YAML keys, CLI flags and Python arguments are spellings of these fields."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from .budget import parse_duration
from .errors import ConfigError
from .hardware import DTYPES, QUANTS
from .templates import CHAT_TEMPLATES

CHAT_FORMAT_NAMES = ("auto", *CHAT_TEMPLATES)


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
    device: str | None = None  # cpu / cuda; None = cuda when present
    backend: str = "transformers"  # 'vllm' (GPU + vllm installed), or 'auto' = vllm when it can run
    tensor_parallel: int = 1  # vllm: GPUs one model is split over (a model larger than one GPU)
    progress: bool = True  # progress bar with rate and ETA
    workers: int = 1  # processes over shards of the rows; one per GPU (Kaggle T4 x2: 2)
    shard: str | None = None  # 'I/N': compute shard I of N into `out` (a results file for `merge`)
    checkpoint: str | None = None  # resumable results file; None = '<out>.ckpt.jsonl'
    plan: bool = True  # with a budget: measure throughput, predict the run, lower max_length to fit
    fast_paths: bool = True  # off: compute as plain transformers (no prefix cache, pruning, CPU kernels)

    def __post_init__(self):
        _check_positive(
            self, "max_length", "batch_tokens", "max_new_tokens", "temperature", "workers", "tta", "context_k"
        )
        if self.quant is not None and self.quant not in QUANTS:
            raise ConfigError("quant", f"{self.quant!r} is not one of {list(QUANTS)}")
        if self.chat_format is not None and self.chat_format not in CHAT_FORMAT_NAMES:
            raise ConfigError("chat_format", f"{self.chat_format!r} is not one of {list(CHAT_FORMAT_NAMES)}")
        if self.backend not in ("transformers", "vllm", "auto"):
            raise ConfigError("backend", f"{self.backend!r} is not one of ['transformers', 'vllm', 'auto']")
        _check_positive(self, "tensor_parallel")
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
    scs_max_tokens: int | None = 128  # SCS only: input cut here (Kaggle's scorer: 128 tokens)
    scs_special_tokens_as_text: bool = True  # SCS only: '</s>' in a text is characters, as Kaggle's scorer read it

    def __post_init__(self):
        _check_positive(self, "scs_max_tokens")


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
    """Synthetic Prompt Recovery triples: original texts rewritten by an LLM under known rewrite prompts."""

    texts: str  # CSV with the original texts
    prompts: str  # rewrite prompts: a text file (one per line) or a CSV column
    out: str = "runs/synthetic_train.csv"  # the competition's train.csv columns
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
        _check_positive(self, "rows", "per_text", "max_new_tokens", "max_length", "max_text_chars")
        parse_duration(self.budget, "budget")


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
    model: str | None = "demo"  # as in PredictConfig
    adapter: str | None = None
    budget: str | None = "9h"  # Kaggle's limit for code competitions
    max_length: int = 2048
    batch_tokens: int | None = None
    max_new_tokens: int | None = None
    workers: int = 1  # the run's workers (GPUs); the time divides among them
    tta: int = 1  # views per row, as in PredictConfig (the time multiplies)
    dtype: str | None = None
    quant: str | None = None  # as in PredictConfig
    device: str | None = None

    def __post_init__(self):
        _check_positive(self, "rows", "max_length", "batch_tokens", "max_new_tokens", "workers", "tta")
        parse_duration(self.budget, "budget")


@dataclass
class ValidateConfig:
    """Check a submission's format (and, given the test file, that every id appears once)."""

    competition: str  # a key of COMPETITIONS
    submission: str  # submission CSV
    test: str | None = None  # the test.csv whose ids must all appear


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


def parse_adapters(items: list[str] | None) -> dict[str, str]:
    """['math=runs/a', 'runs/b'] -> {'math': 'runs/a', 'b': 'runs/b'} (a bare folder is named after itself)."""
    from pathlib import Path

    out: dict[str, str] = {}
    for item in items or []:
        name, _, path = item.partition("=") if "=" in item else (Path(item).name, "", item)
        if not name or not path:
            raise ConfigError("adapter", f"{item!r} is not NAME=DIR")
        if name in out:
            raise ConfigError("adapter", f"adapter name {name!r} given twice")
        out[name] = path
    return out


def from_dict(cls, values: dict):
    """A config from a dict (YAML or --set pairs); unknown keys raise ConfigError naming them."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(unknown[0], f"unknown field for {cls.__name__}; valid: {sorted(known)}")
    return cls(**values)


SCHEDULERS = ("constant", "linear", "cosine")
LOSSES = ("completion", "answer")


@dataclass
class TrainConfig:
    """One LoRA / QLoRA training run. Defaults fit a Kaggle T4 (15 GB) with a 7-9B model in 4-bit."""

    competition: str  # a key of COMPETITIONS, or 'alpaca' for instruction data (JSON/JSONL)
    train: str  # labelled train file (the competition's train.csv format, or alpaca JSON/JSONL)
    valid: str | None = None  # validation file; None = hold out `valid_fraction` of train
    valid_fraction: float = 0.1  # held-out share when `valid` is not given (split grouped by prompt)
    model: str = "demo"  # base model folder or 'demo'
    out: str = "runs/train"  # run folder: best/, last/, metrics.jsonl, loss_curve.png
    quant: str = "nf4"  # 'nf4' = QLoRA (4-bit NF4, double quant); 'int8' = 8-bit base; 'none' = LoRA in `dtype`
    dtype: str | None = None  # compute dtype; None = hardware profile (T4: float16, CPU here: float32)
    device: str | None = None  # cpu / cuda; None = cuda when present
    lora_r: int = (
        16  # rank; a 38th-place LMSYS solution used 32 on q,k,v,o, the NTU ADL homework 64 on all linear layers
    )
    lora_alpha: int = 32  # scale = alpha / r
    lora_dropout: float = 0.05
    target_modules: str | list = "all-linear"  # a list of module names, or 'all-linear'
    loss: str = "completion"  # 'completion' (prompt tokens masked) or 'answer' (only the first answer token)
    chat_format: str = (
        "auto"  # 'auto' = the tokenizer's template; 'alpaca' = a Science Exam QLoRA repo's format; 'plain'
    )
    soft_labels: str | None = None  # CSV: id + a teacher's probability per label (an LMSYS submission on train)
    distill_weight: float = 1.0  # with soft_labels: the KL term's share; the rest is the hard-label loss
    views: int = 1  # train rows under this many views: lmsys 2 = paired rows (A/B and label swapped), science <= 5
    max_length: int = 1024  # tokens per example; long prompts lose their start (the end holds the question)
    batch_size: int = 2  # rows per micro-batch; 2 x 1024 tokens fits a 9B 4-bit model on a T4
    grad_accum: int = 8  # micro-batches per optimizer step (effective batch 16, as the NTU ADL homework)
    lr: float = 2e-4
    scheduler: str = "cosine"  # constant / linear / cosine (after warmup)
    warmup_ratio: float = 0.03  # the NTU ADL homework
    epochs: float = 1.0
    max_steps: int | None = None  # optimizer steps; overrides epochs
    max_grad_norm: float = 0.3  # the NTU ADL homework (QLoRA paper)
    weight_decay: float = 0.0
    gradient_checkpointing: bool | None = None  # less memory, ~30% slower; None = on for a GPU under 24 GB (T4)
    seed: int = 42
    log_every: int = 10  # optimizer steps between log lines
    eval_every: int = 50  # optimizer steps between evaluations (the NTU ADL homework: 500 on 10k rows)
    eval_metric: bool = True  # also compute the competition metric at each evaluation
    best_by: str = "eval_loss"  # 'eval_loss' or 'metric': what picks the best checkpoint
    patience: int | None = None  # stop after this many evaluations without improvement
    budget: str | None = None  # wall clock for training; stops in time, keeping the best adapter
    deepspeed: str | None = None  # not supported (see __post_init__); DDP: accelerate launch --num_processes 2
    progress: bool = True

    def __post_init__(self):
        _check_positive(
            self,
            "lora_r",
            "lora_alpha",
            "max_length",
            "batch_size",
            "grad_accum",
            "lr",
            "epochs",
            "max_steps",
            "log_every",
            "eval_every",
            "patience",
            "views",
        )
        for name, allowed in (
            ("scheduler", SCHEDULERS),
            ("loss", LOSSES),
            ("quant", QUANTS),
            ("best_by", ("eval_loss", "metric")),
            ("chat_format", CHAT_FORMAT_NAMES),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(name, f"{getattr(self, name)!r} is not one of {list(allowed)}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ConfigError("distill_weight", f"must be in [0, 1], got {self.distill_weight}")
        if self.soft_labels and self.loss != "answer":
            raise ConfigError("soft_labels", "distillation scores one answer token per row: set loss: answer")
        if self.soft_labels and self.competition == "alpaca":
            raise ConfigError("soft_labels", "alpaca data has no labels to distil; a choice competition has")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError("lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ConfigError("valid_fraction", f"must be in (0, 1), got {self.valid_fraction}")
        if not (
            self.target_modules == "all-linear"
            or (
                isinstance(self.target_modules, list)
                and self.target_modules
                and all(isinstance(m, str) for m in self.target_modules)
            )
        ):
            raise ConfigError("target_modules", f"'all-linear' or a list of module names, got {self.target_modules!r}")
        parse_duration(self.budget, "budget")
        if self.deepspeed:
            raise ConfigError(
                "deepspeed",
                "not supported: the loop steps its optimizer once per accumulated step, which DeepSpeed's engine "
                "does not see; LoRA's trainable weights are small, so DDP (accelerate launch --num_processes 2) "
                "is what 2 GPUs need",
            )
        if self.best_by == "metric" and not self.eval_metric:
            raise ConfigError("best_by", "'metric' needs eval_metric: true (or best_by: eval_loss)")


def read_yaml_mapping(path, flag: str) -> dict:
    """The mapping a YAML file holds; ConfigError naming `flag` when missing, invalid or not a mapping."""
    from pathlib import Path

    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(flag, f"file {path} not found")
    try:
        values = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(flag, f"{path} is not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(flag, f"{path} must hold a mapping of field: value")
    return values


def load_yaml_config(cls, path: str | None, overrides: list[str] = (), **required):
    """A config from a YAML file plus `key=value` overrides (values parsed as YAML) and required fields."""
    import yaml

    values = read_yaml_mapping(path, "config") if path else {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError("set", f"{item!r} is not key=value")
        key, raw = item.split("=", 1)
        values[key.strip()] = yaml.safe_load(raw)
    values.update({k: v for k, v in required.items() if v is not None})
    try:
        return from_dict(cls, values)
    except TypeError as exc:
        raise ConfigError("config", str(exc)) from None
