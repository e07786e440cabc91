"""kaggle-kit: argparse subcommands, each parsed into one config and handed to one function."""

from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from ..errors import KitError
from ..kaggle import commands as kc
from . import run, tools

COMMANDS = {
    "predict": ("write a submission CSV for a competition's test file", run._add_predict, run._predict),
    "score": ("score a submission against a labelled file", run._add_score, run._score),
    "validate": ("check a submission's format and ids", run._add_validate, run._validate),
    "train": ("train a LoRA / QLoRA adapter from a YAML config", tools._add_train, tools._train),
    "calibrate": ("fit the choice temperature on a validation split", run._add_calibrate, run._calibrate),
    "ensemble": ("fit ensemble weights + temperature on a validation split", run._add_ensemble, run._ensemble),
    "perplexity": (
        "perplexity of instruction outputs, zero/few-shot or tuned",
        tools._add_perplexity,
        tools._perplexity,
    ),
    "synth": ("synthetic training rows from a local LLM", tools._add_synth, tools._synth),
    "mean-prompt": (
        "search the constant text closest to known texts",
        tools._add_mean_prompt,
        tools._mean_prompt,
    ),
    "average-adapters": (
        "average LoRA adapters of folds",
        tools._add_average_adapters,
        tools._average_adapters,
    ),
    "merge-adapter": (
        "merge an adapter into its base",
        tools._add_merge_adapter,
        tools._merge_adapter,
    ),
    "merge": ("join shard files of predict --shard I/N into one submission", run._add_merge, run._merge),
    "rehearse": ("predict the runtime of a hidden test set before pushing", run._add_rehearse, run._rehearse),
    "serve": (
        "the NeurIPS challenge HTTP API over LoRA adapters",
        tools._add_serve,
        tools._serve,
    ),
    "kernel": ("build / check / push / status / output / submit Kaggle kernels", kc._add_kernel, kc._kernel),
    "wheels": ("build the offline wheels dataset (kit + pinned deps Kaggle lacks)", kc._add_wheels, kc._wheels),
    "dataset": ("push a dataset folder (the wheels) to Kaggle", kc._add_dataset, kc._dataset),
    "data": ("download a competition's files", kc._add_data, kc._data),
    "model": ("push an adapter to Kaggle Models", kc._add_model, kc._model),
    "demo": ("predict and score every competition on data/ and print a table", run._add_demo, run._demo),
    "init": ("write a draft competition spec from a folder of competition files", tools._add_init, tools._init),
    "check-spec": ("validate competition spec files", tools._add_check_spec, tools._check_spec),
    "env": ("versions, device, dtype profile and models found, for a bug report", tools._add_env, tools._env),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser per COMMANDS entry."""
    parser = argparse.ArgumentParser(prog="kaggle-kit", description="LLM Kaggle competition kit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"kaggle-kit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, add, job) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add(p)
        p.set_defaults(run=job)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 on success, 1 for an invalid submission, 2 with one line for user errors."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.run(args)
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
