"""The subcommands that run a competition's test or labelled file: predict, merge, rehearse, score,
validate, calibrate, ensemble, demo. Each parses its flags into one config and calls one job."""

from __future__ import annotations


def _config(cls, args, **values):
    """A config dataclass from the parsed flags of the same names (flags spell the fields), plus `values`."""
    from dataclasses import fields

    names = {f.name for f in fields(cls)} - set(values)
    return cls(**{n: getattr(args, n) for n in names if hasattr(args, n)}, **values)


def _yaml(text: str):
    """A flag's value read as YAML ('{enable_thinking: false}'); the config checks what it holds."""
    import yaml

    return yaml.safe_load(text)


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


def _add_backend_args(p):
    """The engine that runs the model, shared by predict and rehearse (which times the same engine)."""
    p.add_argument("--backend", default="transformers", choices=["transformers", "vllm", "auto"])
    p.add_argument("--tensor-parallel", type=int, default=1, help="vllm: GPUs one model is split over")


def _add_scs_args(p):
    """How the SCS embedder reads text; the defaults mirror Kaggle's sentence-t5-base scorer."""
    p.add_argument("--scs-max-tokens", type=int, default=128, help="SCS: cut each text here (Kaggle: 128)")
    p.add_argument(
        "--scs-special-tokens",
        choices=["text", "parsed"],
        default="text",
        help="SCS: read '</s>' etc. as plain characters (Kaggle's scorer) or as special tokens",
    )


def _predict(args):
    from ..config import PredictConfig
    from ..jobs import predict

    cfg = _config(
        PredictConfig, args, progress=not args.no_progress, plan=not args.no_plan, fast_paths=args.fast_paths == "on"
    )
    res = predict(cfg)
    print(
        f"{res.submission}: {res.rows} rows, {res.predicted} predicted ({res.resumed} resumed), "
        f"{res.fallback} fallback, {res.rows_per_s:.2f} rows/s, {res.seconds:.1f}s"
    )
    return 0


def _add_predict(p):
    p.add_argument("competition", help="science_exam | lmsys | prompt_recovery")
    p.add_argument("--data", required=True, help="the competition's test.csv")
    _add_model_args(p)
    p.add_argument(
        "--chat-template-kwargs",
        type=_yaml,
        metavar="MAPPING",
        help="variables the chat template reads, e.g. '{enable_thinking: false}' (default: as the adapter trained)",
    )
    p.add_argument("--out", default="submission.csv", help="submission path (default submission.csv)")
    p.add_argument("--budget", help="wall clock for the run, e.g. 9h, 30m, 45s")
    p.add_argument(
        "--temperature", type=float, help="choice-logit temperature (default: the adapter's calibration, else 1)"
    )
    p.add_argument(
        "--tta", type=int, default=1, help="views per row: science_exam <=5 option orders, lmsys 2 (A/B swap)"
    )
    _add_prompt_args(p)
    _add_mean_prompt_args(p)
    _add_backend_args(p)
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
    p.add_argument("--limit-rows", type=int, help="run the model on the first N rows only (a smoke run)")
    p.add_argument(
        "--fast-paths",
        choices=["on", "off"],
        default="on",
        help="off: compute as plain transformers does (no prefix cache, pruning, fp32 label head, CPU kernels)",
    )


def _merge(args):
    from ..config import MergeConfig
    from ..jobs import merge

    res = merge(
        MergeConfig(
            args.competition,
            args.data,
            args.parts,
            out=args.out,
            mean_prompt=args.mean_prompt,
            append_mean_prompt=args.append_mean_prompt,
        )
    )
    print(f"{res.submission}: {res.rows} rows, {res.predicted} predicted, {res.fallback} fallback")
    return 0


def _add_merge(p):
    p.add_argument("competition")
    p.add_argument("--data", required=True, help="the test.csv the shards were computed on")
    p.add_argument("--parts", nargs="+", required=True, help="shard files from predict --shard I/N")
    p.add_argument("--out", default="submission.csv")
    _add_mean_prompt_args(p)


def _add_mean_prompt_args(p):
    p.add_argument("--mean-prompt", help="prompt_recovery: text file from `mean-prompt`, used as the fallback row")
    p.add_argument("--append-mean-prompt", action="store_true", help="prompt_recovery: append it to predictions")


def _rehearse(args):
    from ..config import RehearseConfig
    from ..jobs import rehearse

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


def _add_rehearse(p):
    p.add_argument("competition")
    p.add_argument("--data", required=True, help="rows like the hidden test's")
    p.add_argument("--rows", type=int, default=25000, help="hidden test size (default 25000)")
    _add_model_args(p)
    p.add_argument("--budget", default="9h", help="the run's budget (default 9h, Kaggle's limit)")
    p.add_argument("--workers", type=int, default=1, help="GPUs the run will use")
    p.add_argument("--tta", type=int, default=1, help="views per row the run will score (time x tta)")
    _add_prompt_args(p)
    _add_backend_args(p)


def _add_prompt_args(p):
    """What the prompts hold beyond the row, shared by predict and rehearse (which times the same prompts)."""
    p.add_argument("--shots", type=int, default=0, help="science_exam: solved examples before each question")
    p.add_argument("--shots-file", help="labelled CSV the shots come from (balanced over answer letters)")
    p.add_argument("--context", help="science_exam: passage file (CSV/parquet) retrieved into each prompt")
    p.add_argument("--context-column", default="text", help="the passage file's text column")
    p.add_argument("--context-k", type=int, default=3, help="passages retrieved per question")
    p.add_argument("--context-tokens", type=int, default=512, help="LLM tokens of context per question")
    p.add_argument("--embedder", help="retrieval embedder: 'minilm' or a sentence-transformers folder")


def _score(args):
    from ..config import ScoreConfig
    from ..jobs import score

    value = score(_config(ScoreConfig, args, scs_special_tokens_as_text=args.scs_special_tokens == "text"))
    from ..competitions import get

    print(f"{get(args.competition).metric}: {value:.6f}")
    return 0


def _add_score(p):
    p.add_argument("competition")
    p.add_argument("--submission", required=True)
    p.add_argument("--truth", required=True, help="labelled CSV (train format)")
    p.add_argument("--embedder", help="prompt_recovery: 'minilm' or a sentence-transformers folder")
    _add_scs_args(p)


def _validate(args):
    from ..config import ValidateConfig
    from ..jobs import validate

    problems = validate(ValidateConfig(args.competition, args.submission, args.test))
    for p in problems:
        print(p)
    print("valid" if not problems else f"INVALID: {len(problems)} problem(s)")
    return 0 if not problems else 1


def _add_validate(p):
    p.add_argument("competition")
    p.add_argument("submission")
    p.add_argument("--test", help="test.csv whose ids must all appear once")


def _calibrate(args):
    from ..config import CalibrateConfig
    from ..playbooks.calibration import calibrate

    res = calibrate(_config(CalibrateConfig, args))
    print(
        f"temperature {res['temperature']:.3f} on {res['rows']} rows: log loss {res['log_loss_before']:.4f} -> "
        f"{res['log_loss_after']:.4f}" + (f"; saved to {res['saved']}" if "saved" in res else "")
    )
    return 0


def _add_calibrate(p):
    p.add_argument("competition", help="lmsys")
    p.add_argument("--submission", required=True, help="predictions for --truth made with --temperature 1")
    p.add_argument("--truth", required=True, help="labelled validation file")
    p.add_argument("--adapter", help="save calibration.json here (predict then uses it)")


def _ensemble(args):
    from ..config import EnsembleConfig
    from ..jobs.ensemble import fit

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


def _demo(args):
    from ..jobs.demo import print_demo, run_demo

    print_demo(
        run_demo(
            args.data_dir,
            args.out_dir,
            model=args.model,
            budget=args.budget,
            names=args.competition or None,
            progress=not args.no_progress,
            rows=args.rows,
            recipes=not args.no_recipe,
            max_new_tokens=args.max_new_tokens,
        )
    )
    return 0


def _add_demo(p):
    p.add_argument("--data-dir", default="data")
    p.add_argument("--out-dir", default="runs/demo")
    p.add_argument("--model", default="demo")
    p.add_argument("--budget", help="per-competition budget")
    p.add_argument("--competition", action="append", help="only this one (repeatable)")
    p.add_argument("--rows", type=int, default=40, help="labelled rows per competition, half scored (default 40)")
    p.add_argument("--no-recipe", action="store_true", help="constant and zero-shot only (no training, minutes less)")
    p.add_argument("--max-new-tokens", type=int, help="generation length (default: each competition's)")
    p.add_argument("--no-progress", action="store_true")
