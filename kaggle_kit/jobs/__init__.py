"""One function per job, called the same way from notebooks, the CLI and tests: predict(cfg), score(cfg),
validate(cfg), train(cfg), ... Each takes a config (kaggle_kit.config) and composes the layers below it:
competitions (what the files and the metric are), the engines (infer, train), the playbooks."""

from .evaluate import mean_prompt, score, validate
from .prediction import PredictResult, merge, predict, rehearse
from .training import train
from .work import check_tta, outputs_from_results, sum_stats

__all__ = [
    "PredictResult",
    "check_tta",
    "mean_prompt",
    "merge",
    "outputs_from_results",
    "predict",
    "rehearse",
    "score",
    "sum_stats",
    "train",
    "validate",
]
