"""kaggle-kit: argparse subcommands, each parsed into one config and handed to one function."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import KitError
from .kaggle import commands as kc


def _config(cls, args, **values):
    """A config dataclass from the parsed flags of the same names (flags spell the fields), plus `values`."""
    from dataclasses import fields

    names = {f.name for f in fields(cls)} - set(values)
    return cls(**{n: getattr(args, n) for n in names if hasattr(args, n)}, **values)


def _predict(args):
    from .config import PredictConfig
    from .jobs import predict

    cfg = _config(
        PredictConfig, args, progress=not args.no_progress, plan=not args.no_plan, fast_paths=args.fast_paths == "on"
    )
    res = predict(cfg)
    print(
        f"{res.submission}: {res.rows} rows, {res.predicted} predicted ({res.resumed} resumed), "
        f"{res.fallback} fallback, {res.rows_per_s:.2f} rows/s, {res.seconds:.1f}s"
    )
    return 0


def _merge(args):
    from .config import MergeConfig
    from .jobs import merge

    res = merge(MergeConfig(args.competition, args.data, args.parts, out=args.out))
    print(f"{res.submission}: {res.rows} rows, {res.predicted} predicted, {res.fallback} fallback")
    return 0


def _rehearse(args):
    from .config import RehearseConfig
    from .jobs import rehearse

    rep = rehearse(_config(RehearseConfig, args))
    speeds = ", ".join(f"{k} tok: {v:.0f} tok/s" for k, v in rep["throughput"].items())
    print(f"measured: {speeds}")
    print(
        f"predicted inference time for {rep['rows']} rows (mean {rep['mean_tokens']:.0f} tokens): "
        f"{rep['predicted_s'] / 3600:.2f} h ({rep['predicted_s']:.0f} s)"
    )
    if "budget_s" in rep:
        verdict = "fits" if rep["fits"] else f"does NOT fit; max_length {rep['max_length_to_fit']} would"
        print(f"budget {rep['budget_s'] / 3600:.2f} h: {verdict}")
    return 0


def _score(args):
    from .config import ScoreConfig
    from .jobs import score

    value = score(_config(ScoreConfig, args, scs_special_tokens_as_text=args.scs_special_tokens == "text"))
    from .competitions import get

    print(f"{get(args.competition).metric}: {value:.6f}")
    return 0


def _calibrate(args):
    from .calibration import calibrate
    from .config import CalibrateConfig

    res = calibrate(_config(CalibrateConfig, args))
    print(
        f"temperature {res['temperature']:.3f} on {res['rows']} rows: log loss {res['log_loss_before']:.4f} -> "
        f"{res['log_loss_after']:.4f}" + (f"; saved to {res['saved']}" if "saved" in res else "")
    )
    return 0


def _ensemble(args):
    from .config import EnsembleConfig
    from .ensemble import fit

    spec = fit(_config(EnsembleConfig, args, progress=not args.no_progress))
    f = spec.fitted
    weights = ", ".join(f"{k} {v:.3f}" for k, v in spec.weights.items())
    print(
        f"weights {weights}; temperature {spec.temperature:.3f}; log loss on {f['rows']} rows: members "
        f"{f['log_loss_members']}, equal weights {f['log_loss_equal_weights']:.4f}, fitted "
        f"{f['log_loss_fitted']:.4f} -> {args.out or args.ensemble}"
    )
    return 0


def _add_ensemble(p):
    p.add_argument("competition", help="science_exam | lmsys")
    p.add_argument("--ensemble", required=True, help="ensemble YAML: members (name, model, adapter, tta)")
    p.add_argument("--truth", required=True, help="labelled validation file every member predicts")
    p.add_argument("--out", help="write the fitted YAML here (default: update --ensemble)")
    p.add_argument("--work", default="runs/ensemble_fit", help="prefix for the members' temporary results")
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--no-progress", action="store_true")


def _perplexity(args):
    from .config import PerplexityConfig
    from .instruct import evaluate

    res = evaluate(_config(PerplexityConfig, args, progress=not args.no_progress))
    print(f"perplexity {res.perplexity:.4f} on {res.scored} of {res.rows} examples ({res.shots} shots)")
    return 0


def _add_perplexity(p):
    p.add_argument("--data", required=True, help="alpaca JSON/JSONL with reference outputs")
    p.add_argument("--model", help="local model folder or 'demo' (default: the adapter's base, else demo)")
    p.add_argument("--adapter", help="trained adapter (the 'tuned' comparison)")
    p.add_argument("--shots", type=int, default=0, help="solved examples before each instruction")
    p.add_argument("--shots-file", help="alpaca file the shots come from")
    p.add_argument("--shots-category", help="record field the shots are balanced over")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--batch-tokens", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget")
    p.add_argument("--quant", choices=["nf4", "int8", "none"])
    p.add_argument("--no-progress", action="store_true")


def _synth(args):
    from .config import SynthConfig
    from .synth import synthesize

    res = synthesize(_config(SynthConfig, args, progress=not args.no_progress))
    print(f"{res.out}: {res.rows} of {res.requested} rewrites ({res.dropped} dropped), {res.seconds:.0f}s")
    return 0


def _add_synth(p):
    p.add_argument("--texts", required=True, help="CSV with original texts")
    p.add_argument("--prompts", required=True, help="rewrite prompts: .txt (one per line) or a CSV column")
    p.add_argument("--out", default="runs/synthetic_train.csv")
    p.add_argument("--model", help="local model folder or 'demo' (default demo)")
    p.add_argument("--adapter")
    p.add_argument("--text-column", default="original_text")
    p.add_argument("--prompt-column", default="rewrite_prompt")
    p.add_argument("--rows", type=int, help="first N texts")
    p.add_argument("--per-text", type=int, default=1, help="different prompts per text")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget")
    p.add_argument("--no-progress", action="store_true")


def _add_calibrate(p):
    p.add_argument("competition", help="lmsys")
    p.add_argument("--submission", required=True, help="predictions for --truth made with --temperature 1")
    p.add_argument("--truth", required=True, help="labelled validation file")
    p.add_argument("--adapter", help="save calibration.json here (predict then uses it)")


def _mean_prompt(args):
    from .config import MeanPromptConfig
    from .jobs import mean_prompt

    res = mean_prompt(_config(MeanPromptConfig, args, scs_special_tokens_as_text=args.scs_special_tokens == "text"))
    print(f"mean SCS {res.score:.4f} on the known prompts: {res.text!r} -> {args.out}")
    return 0


def _add_mean_prompt(p):
    p.add_argument("--prompts", required=True, help="CSV with the known rewrite prompts")
    p.add_argument("--column", default="rewrite_prompt")
    p.add_argument("--embedder", help="'minilm' or a sentence-transformers folder (sentence-t5-base on Kaggle)")
    p.add_argument("--max-words", type=int, default=16)
    p.add_argument("--restarts", type=int, default=3)
    p.add_argument("--vocab-size", type=int, default=200)
    p.add_argument("--out", default="mean_prompt.txt")
    _add_scs_args(p)


def _add_scs_args(p):
    """How the SCS embedder reads text; the defaults mirror Kaggle's sentence-t5-base scorer."""
    p.add_argument("--scs-max-tokens", type=int, default=128, help="SCS: cut each text here (Kaggle: 128)")
    p.add_argument(
        "--scs-special-tokens",
        choices=["text", "parsed"],
        default="text",
        help="SCS: read '</s>' etc. as plain characters (Kaggle's scorer) or as special tokens",
    )


def _validate(args):
    from .config import ValidateConfig
    from .jobs import validate

    problems = validate(ValidateConfig(args.competition, args.submission, args.test))
    for p in problems:
        print(p)
    print("valid" if not problems else f"INVALID: {len(problems)} problem(s)")
    return 0 if not problems else 1


def _demo(args):
    from .demo import print_demo, run_demo

    print_demo(
        run_demo(
            args.data_dir,
            args.out_dir,
            model=args.model,
            budget=args.budget,
            names=args.competition or None,
            progress=not args.no_progress,
            rows=args.rows,
        )
    )
    return 0


def _serve(args):
    from .config import ServeConfig, parse_adapters
    from .serve import serve

    serve(_config(ServeConfig, args, adapters=parse_adapters(args.adapter)))
    return 0


def _add_serve(p):
    p.add_argument("--model", default="demo", help="local model folder or 'demo'")
    p.add_argument("--adapter", action="append", metavar="NAME=DIR", help="LoRA adapter to load (repeatable)")
    p.add_argument("--routes", help="routes YAML: rules, embedding router, default adapter")
    p.add_argument("--host", default="127.0.0.1", help="default loopback (the API has no authentication)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-prompt-tokens", type=int, default=2048)
    p.add_argument("--max-new-tokens", type=int, default=512, help="cap on a request's max_new_tokens")
    p.add_argument("--max-num-samples", type=int, default=4)
    p.add_argument("--max-batch", type=int, default=8, help="requests for one adapter decoded together")
    p.add_argument("--max-queue", type=int, default=256, help="waiting requests beyond this get HTTP 503")


def _add_model_args(p):
    """Model and inference-shape flags shared by predict and rehearse."""
    p.add_argument("--model", help="local model folder or 'demo' (default: the adapter's base, else demo)")
    p.add_argument("--adapter", help="LoRA adapter folder (a kit checkpoint names its base model)")
    p.add_argument("--max-length", type=int, default=2048, help="prompt tokens kept (default 2048)")
    p.add_argument("--batch-tokens", type=int, help="padded tokens per batch (default: GPU 16384, CPU 2048)")
    p.add_argument("--max-new-tokens", type=int, help="generation length (default: competition's)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="default: hardware profile")
    p.add_argument("--quant", choices=["nf4", "int8", "none"], help="base weights (default: as the adapter trained)")
    p.add_argument("--chat-format", choices=["auto", "alpaca", "plain"], help="default: as the adapter trained")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when present")


def _add_predict(p):
    p.add_argument("competition", help="science_exam | lmsys | prompt_recovery")
    p.add_argument("--data", required=True, help="the competition's test.csv")
    _add_model_args(p)
    p.add_argument("--out", default="submission.csv", help="submission path (default submission.csv)")
    p.add_argument("--budget", help="wall clock for the run, e.g. 9h, 30m, 45s")
    p.add_argument(
        "--temperature", type=float, help="choice-logit temperature (default: the adapter's calibration, else 1)"
    )
    p.add_argument(
        "--tta", type=int, default=1, help="views per row: science_exam <=5 option orders, lmsys 2 (A/B swap)"
    )
    p.add_argument("--shots", type=int, default=0, help="science_exam: solved examples before each question")
    p.add_argument("--shots-file", help="labelled CSV the shots come from (balanced over answer letters)")
    p.add_argument("--mean-prompt", help="prompt_recovery: text file from `mean-prompt`, used as the fallback row")
    p.add_argument("--append-mean-prompt", action="store_true", help="prompt_recovery: append it to predictions")
    p.add_argument("--context", help="science_exam: passage file (CSV/parquet) retrieved into each prompt")
    p.add_argument("--context-column", default="text", help="the passage file's text column")
    p.add_argument("--context-k", type=int, default=3, help="passages retrieved per question")
    p.add_argument("--context-tokens", type=int, default=512, help="LLM tokens of context per question")
    p.add_argument("--embedder", help="retrieval embedder: 'minilm' or a sentence-transformers folder")
    p.add_argument("--backend", default="transformers", choices=["transformers", "vllm", "auto"])
    p.add_argument("--tensor-parallel", type=int, default=1, help="vllm: GPUs one model is split over")
    p.add_argument("--ensemble", help="ensemble YAML: each member model in its own process, weighted")
    p.add_argument("--cascade-model", help="second model re-answering the least confident rows")
    p.add_argument("--cascade-adapter", help="the second model's adapter")
    p.add_argument("--cascade-fraction", type=float, default=0.4, help="share re-answered (default 0.4)")
    p.add_argument(
        "--cascade-dtype",
        choices=["float32", "float16", "bfloat16"],
        help="the second model's dtype; alone: the same model (float32 re-checks bf16 near-ties)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--workers", type=int, default=1, help="processes over shards; one per GPU (T4 x2: 2)")
    p.add_argument("--shard", help="I/N: compute shard I of N into --out (join with 'merge')")
    p.add_argument("--checkpoint", help="resumable results file (default OUT.ckpt.jsonl)")
    p.add_argument("--no-plan", action="store_true", help="with --budget: skip the runtime planner")
    p.add_argument(
        "--fast-paths",
        choices=["on", "off"],
        default="on",
        help="off: compute as plain transformers does (no prefix cache, pruning, fp32 label head, CPU kernels)",
    )


def _train(args):
    from .config import TrainConfig, load_yaml_config
    from .train import train

    cfg = load_yaml_config(TrainConfig, args.config, args.set or [], competition=args.competition)
    res = train(cfg)
    print(
        f"{res.out}: {res.steps} steps ({res.stopped}); best {cfg.best_by} "
        f"{res.best_value:.4f} at step {res.best_step} -> {res.best}"
    )
    return 0


def _merge_adapter(args):
    from .models import merge_adapter

    print(merge_adapter(args.adapter, args.out, model=args.model, dtype=args.dtype))
    return 0


def _add_train(p):
    p.add_argument("competition", help="science_exam | lmsys | prompt_recovery | alpaca")
    p.add_argument("--config", help="YAML config (configs/<competition>.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")


def _average_adapters(args):
    from .models import average_adapters

    print(average_adapters(args.adapter, args.out))
    return 0


def _add_average_adapters(p):
    p.add_argument("--adapter", action="append", required=True, help="adapter folder (repeat, 2 or more)")
    p.add_argument("--out", required=True, help="folder for the averaged adapter")


def _add_merge_adapter(p):
    p.add_argument("--adapter", required=True)
    p.add_argument("--out", required=True, help="folder for the merged model")
    p.add_argument("--model", help="base model (default: the one the adapter names)")
    p.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])


def _add_merge(p):
    p.add_argument("competition")
    p.add_argument("--data", required=True, help="the test.csv the shards were computed on")
    p.add_argument("--parts", nargs="+", required=True, help="shard files from predict --shard I/N")
    p.add_argument("--out", default="submission.csv")


def _add_rehearse(p):
    p.add_argument("competition")
    p.add_argument("--data", required=True, help="rows like the hidden test's")
    p.add_argument("--rows", type=int, default=25000, help="hidden test size (default 25000)")
    _add_model_args(p)
    p.add_argument("--budget", default="9h", help="the run's budget (default 9h, Kaggle's limit)")
    p.add_argument("--workers", type=int, default=1, help="GPUs the run will use")
    p.add_argument("--tta", type=int, default=1, help="views per row the run will score (time x tta)")


def _add_score(p):
    p.add_argument("competition")
    p.add_argument("--submission", required=True)
    p.add_argument("--truth", required=True, help="labelled CSV (train format)")
    p.add_argument("--embedder", help="prompt_recovery: 'minilm' or a sentence-transformers folder")
    _add_scs_args(p)


def _add_validate(p):
    p.add_argument("competition")
    p.add_argument("submission")
    p.add_argument("--test", help="test.csv whose ids must all appear once")


def _add_demo(p):
    p.add_argument("--data-dir", default="data")
    p.add_argument("--out-dir", default="runs/demo")
    p.add_argument("--model", default="demo")
    p.add_argument("--budget", help="per-competition budget")
    p.add_argument("--competition", action="append", help="only this one (repeatable)")
    p.add_argument("--rows", type=int, default=40, help="labelled rows per competition (default 40)")
    p.add_argument("--no-progress", action="store_true")


def _init(args):
    from .competitions.draft import draft
    from .competitions.spec import load_spec
    from .io import write_text_atomic

    out = Path(args.out) if args.out else Path(args.folder) / "competition.yaml"
    if out.exists() and not args.force:
        raise KitError(f"{out} exists; pass --force to replace it, or --out another file")
    write_text_atomic(draft(args.folder), out)
    spec = load_spec(out)
    print(f"{out}: draft spec for {spec.name!r} ({spec.task}, {spec.metric}); read the lines marked CHECK")
    return 0


def _add_init(p):
    p.add_argument("folder", help="a folder with the competition's test, sample_submission (and train) files")
    p.add_argument("--out", help="where the draft goes (default FOLDER/competition.yaml)")
    p.add_argument("--force", action="store_true", help="replace an existing file")


def _check_spec(args):
    from .competitions import get

    for path in args.specs:
        comp = get(path)
        print(f"{path}: valid: {comp.name} ({comp.kind}, {comp.metric}), submission {list(comp.submission_columns)}")
    return 0


def _add_check_spec(p):
    p.add_argument("specs", nargs="+", help="competition spec files (YAML)")


# name -> (help, add arguments, run)
COMMANDS = {
    "predict": ("write a submission CSV for a competition's test file", _add_predict, _predict),
    "score": ("score a submission against a labelled file", _add_score, _score),
    "validate": ("check a submission's format and ids", _add_validate, _validate),
    "train": ("train a LoRA / QLoRA adapter from a YAML config", _add_train, _train),
    "calibrate": ("fit the choice temperature on a validation split", _add_calibrate, _calibrate),
    "ensemble": ("fit ensemble weights + temperature on a validation split", _add_ensemble, _ensemble),
    "perplexity": ("perplexity of instruction outputs (alpaca), zero/few-shot or tuned", _add_perplexity, _perplexity),
    "synth": ("synthetic Prompt Recovery rewrites from texts x prompts", _add_synth, _synth),
    "mean-prompt": ("search the Prompt Recovery mean prompt for known prompts", _add_mean_prompt, _mean_prompt),
    "average-adapters": ("average LoRA adapters trained on different folds", _add_average_adapters, _average_adapters),
    "merge-adapter": ("merge a LoRA adapter into its base model and save it", _add_merge_adapter, _merge_adapter),
    "merge": ("join shard files of predict --shard I/N into one submission", _add_merge, _merge),
    "rehearse": ("predict the runtime of a hidden test set before pushing", _add_rehearse, _rehearse),
    "serve": ("HTTP API (NeurIPS challenge endpoints) routing requests to LoRA adapters", _add_serve, _serve),
    "kernel": ("build / check / push / status / output / submit Kaggle kernels", kc._add_kernel, kc._kernel),
    "wheels": ("build the offline wheels dataset (kit + pinned deps Kaggle lacks)", kc._add_wheels, kc._wheels),
    "dataset": ("push a dataset folder (the wheels) to Kaggle", kc._add_dataset, kc._dataset),
    "data": ("download a competition's files", kc._add_data, kc._data),
    "demo": ("predict and score every competition on data/ and print a table", _add_demo, _demo),
    "init": ("write a draft competition spec from a folder of competition files", _add_init, _init),
    "check-spec": ("validate competition spec files", _add_check_spec, _check_spec),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser per COMMANDS entry."""
    parser = argparse.ArgumentParser(prog="kaggle-kit", description="LLM Kaggle competition kit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, add, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add(p)
        p.set_defaults(run=run)
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
