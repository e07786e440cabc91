"""The subcommands of training, the playbooks, serving and specs: train, perplexity, synth, mean-prompt,
average-adapters, merge-adapter, serve, init, check-spec."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import KitError
from .run import _add_scs_args, _config


def _train(args):
    from ..config import TrainConfig, load_yaml_config
    from ..jobs import train

    cfg = load_yaml_config(TrainConfig, args.config, args.set or [], competition=args.competition)
    res = train(cfg)
    print(
        f"{res.out}: {res.steps} steps ({res.stopped}); best {cfg.best_by} "
        f"{res.best_value:.4f} at step {res.best_step} -> {res.best}"
    )
    return 0


def _add_train(p):
    p.add_argument("competition", help="science_exam | lmsys | prompt_recovery | alpaca")
    p.add_argument("--config", help="YAML config (configs/<competition>.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")


def _perplexity(args):
    from ..config import PerplexityConfig
    from ..playbooks.instruct import evaluate

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
    from ..config import SynthConfig
    from ..playbooks.synth import synthesize

    cfg = _config(SynthConfig, args, progress=not args.no_progress)
    res = synthesize(cfg)
    print(f"{res.out}: {res.rows} of {res.requested} {cfg.kind} ({res.dropped} dropped), {res.seconds:.0f}s")
    return 0


def _add_synth(p):
    p.add_argument(
        "--kind", default="rewrites", choices=["rewrites", "essays"], help="what to write (default rewrites)"
    )
    p.add_argument("--texts", help="rewrites: CSV with original texts")
    p.add_argument("--prompts", required=True, help="rewrites: .txt or a CSV column; essays: train_prompts.csv")
    p.add_argument("--out", default="runs/synthetic_train.csv")
    p.add_argument("--model", help="local model folder or 'demo' (default demo)")
    p.add_argument("--adapter")
    p.add_argument("--text-column", default="original_text")
    p.add_argument("--prompt-column", default="rewrite_prompt")
    p.add_argument("--rows", type=int, help="first N texts")
    p.add_argument("--per-text", type=int, default=1, help="rewrites: prompts per text; essays: essays per prompt")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget")
    p.add_argument("--no-progress", action="store_true")


def _mean_prompt(args):
    from ..config import MeanPromptConfig
    from ..jobs import mean_prompt

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


def _average_adapters(args):
    from ..models import average_adapters

    print(average_adapters(args.adapter, args.out))
    return 0


def _add_average_adapters(p):
    p.add_argument("--adapter", action="append", required=True, help="adapter folder (repeat, 2 or more)")
    p.add_argument("--out", required=True, help="folder for the averaged adapter")


def _merge_adapter(args):
    from ..models import merge_adapter

    print(merge_adapter(args.adapter, args.out, model=args.model, dtype=args.dtype))
    return 0


def _add_merge_adapter(p):
    p.add_argument("--adapter", required=True)
    p.add_argument("--out", required=True, help="folder for the merged model")
    p.add_argument("--model", help="base model (default: the one the adapter names)")
    p.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])


def _serve(args):
    from ..config import ServeConfig, parse_adapters
    from ..serve import serve

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


def _init(args):
    from ..competitions import get
    from ..competitions.draft import draft
    from ..io import write_text_atomic

    out = Path(args.out) if args.out else Path(args.folder) / "competition.yaml"
    if out.exists() and not args.force:
        raise KitError(f"{out} exists; pass --force to replace it, or --out another file")
    write_text_atomic(draft(args.folder), out)
    comp = get(out)
    print(f"{out}: draft spec for {comp.name!r} ({comp.kind}, {comp.metric}); read the lines marked CHECK")
    return 0


def _add_init(p):
    p.add_argument("folder", help="a folder with the competition's test, sample_submission (and train) files")
    p.add_argument("--out", help="where the draft goes (default FOLDER/competition.yaml)")
    p.add_argument("--force", action="store_true", help="replace an existing file")


def _check_spec(args):
    from ..competitions import get

    for path in args.specs:
        comp = get(path)
        print(f"{path}: valid: {comp.name} ({comp.kind}, {comp.metric}), submission {list(comp.submission_columns)}")
    return 0


def _add_check_spec(p):
    p.add_argument("specs", nargs="+", help="competition spec files (YAML)")


def _env(args):
    from ..jobs.environment import format_report, report

    info = report()
    print(json.dumps(info, indent=2) if args.json else format_report(info))
    return 0


def _add_env(p):
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
