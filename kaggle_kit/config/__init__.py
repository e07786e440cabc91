"""Dataclass configs: YAML keys, CLI flags and Python arguments are spellings of these fields; an invalid
value raises ConfigError naming the field and what would be valid."""

from .base import (
    ALIASES,
    CHAT_FORMAT_NAMES,
    from_dict,
    load_yaml_config,
    parse_adapters,
    parse_shard,
    read_yaml_mapping,
)
from .predict import (
    CalibrateConfig,
    EnsembleConfig,
    MergeConfig,
    PredictConfig,
    RehearseConfig,
    ScoreConfig,
    ValidateConfig,
)
from .tools import MeanPromptConfig, PerplexityConfig, ServeConfig, SynthConfig
from .train import LOSSES, SCHEDULERS, TrainConfig

__all__ = [
    "ALIASES",
    "CHAT_FORMAT_NAMES",
    "LOSSES",
    "SCHEDULERS",
    "CalibrateConfig",
    "EnsembleConfig",
    "MeanPromptConfig",
    "MergeConfig",
    "PerplexityConfig",
    "PredictConfig",
    "RehearseConfig",
    "ScoreConfig",
    "ServeConfig",
    "SynthConfig",
    "TrainConfig",
    "ValidateConfig",
    "from_dict",
    "load_yaml_config",
    "parse_adapters",
    "parse_shard",
    "read_yaml_mapping",
]
