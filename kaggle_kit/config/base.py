"""What every config shares: checks, YAML and --set reading, the names users already know (aliases)."""

from __future__ import annotations

import difflib
from dataclasses import fields

from ..errors import ConfigError
from ..templates import CHAT_TEMPLATES

CHAT_FORMAT_NAMES = ("auto", *CHAT_TEMPLATES)

# Hugging Face TrainingArguments' and axolotl's names for the kit's fields: YAML files and --set take both
ALIASES = {
    "output_dir": "out",
    "learning_rate": "lr",
    "per_device_train_batch_size": "batch_size",
    "micro_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "num_train_epochs": "epochs",
    "num_epochs": "epochs",
    "lr_scheduler_type": "scheduler",
    "max_seq_length": "max_length",
    "sequence_len": "max_length",
    "base_model": "model",
    "model_name_or_path": "model",
    "logging_steps": "log_every",
    "eval_steps": "eval_every",
    "train_file": "train",
    "validation_file": "valid",
}
# boolean flags that set the kit's quant field: load_in_4bit: true -> quant: nf4
QUANT_FLAGS = {"load_in_4bit": "nf4", "load_in_8bit": "int8"}


def _check_positive(obj, *names):
    for name in names:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            raise ConfigError(name, f"must be > 0, got {value}")


def check_template_kwargs(value) -> None:
    """chat_template_kwargs: None or a mapping of template variable names to scalars (a template reads
    true/false, numbers and strings: {enable_thinking: false}, {reasoning_effort: low})."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise ConfigError("chat_template_kwargs", f"a mapping such as {{enable_thinking: false}}, got {value!r}")
    for name, item in value.items():
        if not (isinstance(name, str) and name.isidentifier()):
            raise ConfigError("chat_template_kwargs", f"{name!r} is not a template variable name")
        if not isinstance(item, (bool, int, float, str)):
            raise ConfigError(f"chat_template_kwargs.{name}", f"a boolean, number or string, got {item!r}")


def parse_shard(text: str) -> tuple[int, int]:
    """'0/2' -> (0, 2); shards count from 0."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError("shard", f"{text!r} is not I/N (e.g. 0/2)") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError("shard", f"{text!r}: need 0 <= I < N")
    return i, n


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
    """A config from a dict (YAML or --set pairs). Hugging Face / axolotl names are taken as the fields they
    spell (ALIASES); an unknown key raises ConfigError naming it and the closest valid one."""
    known = [f.name for f in fields(cls)]
    values = dict(values)
    for alias, name in ALIASES.items():
        if alias in values and name in known:
            if name in values:
                raise ConfigError(alias, f"both {alias!r} and {name!r} are set; they are the same field")
            values[name] = values.pop(alias)
    for flag, quant in QUANT_FLAGS.items():
        if flag in values and "quant" in known:
            on = values.pop(flag)
            if on is True:
                values["quant"] = quant
            elif on is False and "quant" not in values:
                values["quant"] = "none"
    unknown = sorted(set(values) - set(known))
    if unknown:
        close = difflib.get_close_matches(unknown[0], known + list(ALIASES), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(unknown[0], f"unknown field for {cls.__name__}; {hint}valid: {sorted(known)}")
    return cls(**values)


def read_yaml_mapping(path, flag: str) -> dict:
    """The mapping a YAML file holds; ConfigError naming `flag` when missing, invalid or not a mapping."""
    from ..io import read_yaml_mapping as read

    return read(path, lambda message: ConfigError(flag, message))


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
