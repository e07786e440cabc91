"""Training benchmark: the kit's fit() against a plain transformers.Trainer + peft run, same data, same
steps, each in its own process so peak RSS is its own. The peers are the usual notebook (random batches,
each padded to its longest row, labels masked on the prompt, the model's own loss over full logits) and
a good one: the same with batches grouped by length (`train_sampling_strategy="group_by_length"`).
`--loss answer` trains the first answer token only (the kit then computes logits at that position only;
the Trainer still computes them everywhere). Writes bench/results/train_<device>[_<model>].json.

The kit trains in its hardware profile's dtype (bf16 on a CPU with native bf16, else fp32); the peer in
--peer-dtype: 'same' (the kit's, a like-for-like comparison of the loop) or float32 (a notebook that
keeps the default).

    python bench/train_bench.py [--steps 8] [--batch 4] [--quant nf4|none] [--peer-dtype same|float32|bfloat16]
        [--model demo|demo:gemma3|FOLDER] [--loss completion|answer] [--device cpu|cuda] [--dtype float16]
        [--repeats 2] [--fast-paths on|off] [--gradient-checkpointing] [--results bench/results]
        [--which kit|trainer|grouped: one contender, JSON on stdout]

On a GPU (`--device cuda --dtype float16`, a T4's profile) the Trainer runs there too, and the JSON adds
each contender's peak GPU memory (torch.cuda.max_memory_allocated).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def rows_file() -> Path:
    shared = ROOT.parent / "shared" / "data" / "science_exam" / "train.csv"
    return shared if shared.exists() else ROOT / "data" / "science_exam" / "train.csv"


def run_kit(args, out: Path) -> dict:
    from kaggle_kit.config import TrainConfig
    from kaggle_kit.jobs import train

    cfg = TrainConfig(
        "science_exam",
        str(rows_file()),
        out=str(out),
        model=args.model,
        quant=args.quant,
        device=args.device,
        dtype=args.dtype,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        loss=args.loss,
        max_length=512,
        batch_size=args.batch,
        grad_accum=1,
        lr=2e-4,
        scheduler="constant",
        warmup_ratio=0.0,
        max_steps=args.steps,
        eval_every=10**6,
        eval_metric=False,
        log_every=1,
        valid_fraction=0.1,
        progress=False,
        fast_paths=args.fast_paths == "on",
        gradient_checkpointing=args.gradient_checkpointing or None,
    )
    from kaggle_kit.jobs import training

    # the rows train() sees, caught as it splits them: a second tokenizer in this process would count in
    # the kit's peak RSS (Gemma-3's 262k-token tokenizer holds 0.3 GB)
    seen, prepare = {}, training.prepare_data
    training.prepare_data = lambda cfg, tok: seen.setdefault("split", prepare(cfg, tok))
    res = train(cfg)
    split = seen["split"]
    # steps 2..N, timed from the per-step log lines (model load, step-0 eval and warm-up left out)
    logs = [h for h in res.history if "train_loss" in h]
    took = logs[-1]["elapsed"] - logs[0]["elapsed"]
    from kaggle_kit.train.data import epoch_batches

    lengths = [len(e.input_ids) for e in split.train]
    batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, 0)[1 : args.steps]
    tokens = sum(lengths[i] for b in batches for i in b)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return {"tokens": tokens, "padded": padded, "seconds": took}


def run_trainer(args, out: Path) -> dict:
    import torch

    dtype = getattr(torch, args.peer_dtype)
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        BitsAndBytesConfig,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from kaggle_kit.competitions import get
    from kaggle_kit.models import load_tokenizer, resolve_model

    path = resolve_model(args.model)
    tok = load_tokenizer(path)
    science_exam = get("science_exam")
    df = science_exam.read(rows_file(), labelled=True)
    prompts = science_exam.examples(df, tok, 512)
    rows = []
    for p, a in zip(prompts, df["answer"]):
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        c_ids = tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        p_ids = p_ids[-(512 - len(c_ids)) :]
        labels = c_ids if args.loss == "completion" else c_ids[:1] + [-100] * (len(c_ids) - 1)
        rows.append({"input_ids": p_ids + c_ids, "labels": [-100] * len(p_ids) + labels})
    if args.quant == "nf4":
        bnb = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        where = {"": 0 if args.device == "cuda" else "cpu"}
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=bnb, dtype=dtype, device_map=where)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(args.device or "cpu")
    model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    targs = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=args.batch,
        max_steps=args.steps,
        learning_rate=2e-4,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=args.device != "cuda",
        bf16=args.peer_dtype == "bfloat16",
        fp16=args.peer_dtype == "float16",
        seed=42,
        disable_tqdm=True,
        **({"train_sampling_strategy": "group_by_length"} if args.which == "grouped" else {}),
    )
    trainer = Trainer(
        model=model, args=targs, train_dataset=rows, data_collator=DataCollatorForSeq2Seq(tok, padding=True)
    )
    seen = []
    real_collate = trainer.data_collator

    def counting(features):
        seen.append([len(f["input_ids"]) for f in features])
        return real_collate(features)

    trainer.data_collator = counting
    from transformers import TrainerCallback

    stamps = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    trainer.add_callback(Stamp())
    trainer.train()
    took = stamps[-1] - stamps[0]  # steps 2..N, as for the kit
    tokens = sum(sum(b) for b in seen[1 : args.steps])
    padded = sum(max(b) * len(b) for b in seen[1 : args.steps])
    return {"tokens": tokens, "padded": padded, "seconds": took}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--quant", default="nf4", choices=["nf4", "none"])
    ap.add_argument("--peer-dtype", default="same", choices=["same", "float32", "bfloat16", "float16"])
    ap.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: the hardware profile's")
    ap.add_argument("--dtype", default=None, help="the kit's compute dtype (default: the profile's)")
    ap.add_argument("--which", choices=["kit", "trainer", "grouped"])
    ap.add_argument("--model", default="demo", help="demo (SmolLM2), demo:gemma3, or a model folder")
    ap.add_argument("--loss", default="completion", choices=["completion", "answer"])
    ap.add_argument("--fast-paths", default="on", choices=["on", "off"], help="the kit's training fast paths")
    ap.add_argument(
        "--gradient-checkpointing", action="store_true", help="the kit's layers checkpointed (the peers' are not)"
    )
    ap.add_argument("--repeats", type=int, default=2, help="rounds of the three runs; each keeps its fastest")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results"), help="folder the JSON is written to")
    args = ap.parse_args()
    from kaggle_kit.hardware import detect
    from kaggle_kit.infer.fast.heap import peak_rss_mb

    profile = detect(args.dtype, args.device)
    args.device = profile.device
    if args.peer_dtype == "same":
        args.peer_dtype = profile.compute_dtype
    if args.which:
        with tempfile.TemporaryDirectory() as tmp:
            res = (run_kit if args.which == "kit" else run_trainer)(args, Path(tmp))
        res["peak_rss_mb"] = peak_rss_mb()
        if args.device == "cuda":
            import torch

            res["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        print(json.dumps(res))
        return
    results = {}
    # contenders in rotation, `--repeats` rounds: this VM drifts by 15-25% over minutes, so each keeps its
    # fastest round, and its largest peak RSS
    for which in [w for _ in range(args.repeats) for w in ("kit", "trainer", "grouped")]:
        cmd = [
            sys.executable,
            __file__,
            "--which",
            which,
            "--steps",
            str(args.steps),
            "--batch",
            str(args.batch),
            "--quant",
            args.quant,
            "--peer-dtype",
            args.peer_dtype,
            "--model",
            args.model,
            "--loss",
            args.loss,
            "--fast-paths",
            args.fast_paths,
            *(["--gradient-checkpointing"] if args.gradient_checkpointing else []),
            "--device",
            args.device,
            *(["--dtype", args.dtype] if args.dtype else []),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        res, best = json.loads(out), results.get(which)
        if best:
            peak = max(res["peak_rss_mb"], best["peak_rss_mb"])
            res = res if res["tokens"] / res["seconds"] > best["tokens"] / best["seconds"] else best
            res["peak_rss_mb"] = peak
        results[which] = res
    from kaggle_kit.progress import format_table

    names = {"kit": "kit fit()", "trainer": "Trainer, random batches", "grouped": "Trainer, group_by_length"}
    rows = [
        {
            "run": names[k],
            "train tok/s": v["tokens"] / v["seconds"],
            "padding %": 100 * (1 - v["tokens"] / v["padded"]),
            "seconds": v["seconds"],
            "peak RSS MB": v["peak_rss_mb"],
            **({"peak GPU MB": v["peak_gpu_mb"]} if "peak_gpu_mb" in v else {}),
        }
        for k, v in results.items()
    ]
    print(format_table(rows))
    k, t = results["kit"], results["grouped"]
    print(
        f"kit / length-grouped Trainer tokens/s: {(k['tokens'] / k['seconds']) / (t['tokens'] / t['seconds']):.2f}x; "
        f"peak RSS {k['peak_rss_mb']:.0f} vs {t['peak_rss_mb']:.0f} MB ({args.steps} steps x batch {args.batch}, "
        f"{args.quant}, loss {args.loss}; kit {profile.compute_dtype}, peer {args.peer_dtype}; steps 2..N timed; "
        f"best of {args.repeats})"
    )
    from meta import commit, machine, model_suffix

    suffix = model_suffix(args.model) + ("" if args.fast_paths == "on" else "_fast_paths_off")
    suffix += "_checkpointed" if args.gradient_checkpointing else ""
    out = Path(args.results) / f"train_{profile.device}{suffix}_{args.loss}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(["python", *sys.argv]), "commit": commit(), "model": args.model}
    meta["repeats"] = args.repeats
    meta["machine"] = machine()
    # the rows: the shared file beside the project, or the small sample in data/ where there is none (a
    # worktree outside the project's parent folder): not comparable, so the JSON says which
    meta["data"] = os.path.relpath(rows_file(), ROOT)
    out.write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
