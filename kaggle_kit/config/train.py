"""The training config: one LoRA / QLoRA run."""

from __future__ import annotations

from dataclasses import dataclass

from ..budget import parse_duration
from ..errors import ConfigError
from ..hardware import QUANTS
from .base import CHAT_FORMAT_NAMES, _check_positive, check_template_kwargs

SCHEDULERS = ("constant", "linear", "cosine")


LOSSES = ("completion", "answer")
HEADS = ("tokens", "classifier")  # label tokens of the LM head, or AutoModelForSequenceClassification's linear head
# accelerate's experiment trackers (`report_to`), each with the packages that provide it
TRACKERS = {
    "tensorboard": ("tensorboard", "tensorboardX"),
    "wandb": ("wandb",),
    "trackio": ("trackio",),
    "mlflow": ("mlflow",),
    "comet_ml": ("comet_ml",),
    "aim": ("aim",),
    "clearml": ("clearml",),
    "dvclive": ("dvclive",),
    "swanlab": ("swanlab",),
}


@dataclass
class TrainConfig:
    """One LoRA / QLoRA training run. Defaults fit a Kaggle T4 (15 GB) with a 7-9B model in 4-bit."""

    competition: str  # a key of COMPETITIONS ('alpaca': instruction data, JSON/JSONL) or a spec file's path
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
    head: str = "tokens"  # 'tokens': read the labels' tokens; 'classifier': a trained linear head on the last token
    chat_format: str = (
        "auto"  # 'auto' = the tokenizer's template; 'alpaca' = a Science Exam QLoRA repo's format; 'plain'
    )
    chat_template_kwargs: dict | None = None  # variables the chat template reads: {enable_thinking: false} (Qwen3)
    soft_labels: str | None = None  # CSV: id + a teacher's probability per label (an LMSYS submission on train)
    distill_weight: float = 1.0  # with soft_labels: the KL term's share; the rest is the hard-label loss
    views: int = 1  # train rows under this many views: lmsys 2 = paired rows (A/B and label swapped), science <= 5
    max_length: int = 1024  # tokens per example; long prompts lose their start (the end holds the question)
    batch_size: int = 2  # rows per micro-batch; 2 x 1024 tokens fits a 9B 4-bit model on a T4
    grad_accum: int = 8  # micro-batches per optimizer step (effective batch 16, as the NTU ADL homework)
    eval_batch_size: int | None = None  # rows per eval-loss batch (no activations kept); None = batch_size
    lr: float = 2e-4
    scheduler: str = "cosine"  # constant / linear / cosine (after warmup)
    warmup_ratio: float = 0.03  # the NTU ADL homework
    epochs: float = 1.0
    max_steps: int | None = None  # optimizer steps; overrides epochs
    max_grad_norm: float = 0.3  # the NTU ADL homework (QLoRA paper)
    weight_decay: float = 0.0
    fast_paths: bool = True  # off: peft's own LoRA forward and every norm's fp32 copy kept (train/fast.py)
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
    report_to: str | list | None = None  # experiment trackers through accelerate: tensorboard, wandb, trackio, ...

    def __post_init__(self):
        _check_positive(
            self,
            "lora_r",
            "lora_alpha",
            "max_length",
            "batch_size",
            "eval_batch_size",
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
            ("head", HEADS),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(name, f"{getattr(self, name)!r} is not one of {list(allowed)}")
        check_template_kwargs(self.chat_template_kwargs)
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ConfigError("distill_weight", f"must be in [0, 1], got {self.distill_weight}")
        if self.soft_labels and self.loss != "answer":
            raise ConfigError("soft_labels", "distillation scores one answer token per row: set loss: answer")
        if self.head == "classifier" and (self.loss != "answer" or self.soft_labels):
            raise ConfigError("head", "a classifier head learns one class per row: set loss: answer (no soft_labels)")
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
        self.report_to = _trackers(self.report_to)
        if self.best_by == "metric" and not self.eval_metric:
            raise ConfigError("best_by", "'metric' needs eval_metric: true (or best_by: eval_loss)")


def _trackers(value) -> list[str]:
    """`report_to` as a list of tracker names: None / 'none' -> [], 'all' -> those installed (as in
    transformers' TrainingArguments), a name or a list of names -> checked against accelerate's."""
    import importlib.util

    if value in (None, "none", []):
        return []
    if value == "all":
        return [n for n, pkgs in TRACKERS.items() if any(importlib.util.find_spec(p) for p in pkgs)]
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError("report_to", f"a tracker name or a list of them, got {value!r}")
    for name in names:
        if name not in TRACKERS:
            raise ConfigError("report_to", f"{name!r} is not one of {['none', 'all', *TRACKERS]}")
    return names
