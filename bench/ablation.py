"""What each of the kit's CPU inference parts is worth: choice scoring with one part switched off against
the kit as it is, in alternating rounds on the same rows.

    python bench/ablation.py [--rows 100] [--rounds 6] [--only bias,packed,...] [--competition lmsys]
        [--results bench/results]
    python bench/ablation.py --only layout4bit   # NF4 weights: training's layout against bitsandbytes' repack

Parts: `attention` (infer/fast/attention.py: the blocked attention, or on an AMX CPU in bf16 the flash
kernel a block of queries at a time; off = SDPA), `pruning` (the last layer on the last position only,
infer/fast/last_position.py), `packed` (oneDNN-packed bf16 weights, infer/fast/packed.py), `bias` (the
mask turned into its fp32 bias once a forward, not once a layer: the blocked attention's); and, asked for
by name, `layout4bit` (infer/fast/packed.keep_4bit_layout: the demo model loaded in NF4 as a QLoRA
adapter's base is, its 4-bit weights in the layout training computes with; off = a second NF4 copy that
bitsandbytes repacks for its CPU kernel at its first forward; written to ..._nf4.json). Each part's
rounds alternate which arm goes first; prints best and median seconds of both arms, whether the two give
identical probabilities, their largest difference and top-1 agreement, and writes
bench/results/ablation_cpu_<competition>.json. This VM's timings move 10-20% from minute to minute: read
medians of several rounds, not one pair. Science Exam rows are ~250 tokens; LMSYS rows 270-2,000 (mean
~830), where attention is a larger share.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from infer_bench import rows_file, timed_choice_run  # noqa: E402
from meta import commit, machine  # noqa: E402

from kaggle_kit import competitions  # noqa: E402
from kaggle_kit.hardware import detect  # noqa: E402
from kaggle_kit.infer.fast import attention  # noqa: E402
from kaggle_kit.infer.fast import packed as packed_lib  # noqa: E402
from kaggle_kit.models import load_model  # noqa: E402
from kaggle_kit.progress import format_table  # noqa: E402

PARTS = ("attention", "pruning", "packed", "bias")  # the default run, on the bf16 demo model
NF4_PARTS = ("layout4bit",)
ROWS = {"science_exam": "train.csv", "lmsys": "train_first100.csv"}  # the file in ../shared/data/<competition>/


@contextmanager
def without(part: str, model):
    """The model with `part` switched off inside the block."""
    ours = model.config._attn_implementation
    if part == "attention":
        model.set_attn_implementation("sdpa")
    elif part == "packed":
        mods = [m for m in model.modules() if packed_lib.is_packed(m.__dict__.get("forward"))]
        packed = {m: m.__dict__.pop("forward") for m in mods}
    elif part == "bias":
        shared = attention._shared_bias
        attention._shared_bias = attention._bias
    try:
        yield
    finally:
        if part == "attention":
            model.set_attn_implementation(ours)
        elif part == "packed":
            for m, f in packed.items():
                m.forward = f
        elif part == "bias":
            attention._shared_bias = shared


def repacked_copy():
    """The demo model in NF4 as the kit loads it, but with bitsandbytes' CPU repack let happen again
    (where the CPU has AVX512-BF16; elsewhere bitsandbytes never repacks and the arms are the same)."""
    from bitsandbytes.functional import has_avx512bf16

    model, _ = load_model("demo", detect(None, "cpu"), quant="nf4")
    for m in model.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = has_avx512bf16()
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {PARTS}")
    ap.add_argument("--competition", default="science_exam", choices=sorted(ROWS))
    ap.add_argument("--results", default=str(ROOT / "bench" / "results"), help="folder the JSON is written to")
    args = ap.parse_args()
    parts = [p for p in args.only.split(",") if p]
    nf4 = bool(set(parts) & set(NF4_PARTS))
    if not (set(parts) <= set(PARTS) or set(parts) <= set(NF4_PARTS)):
        ap.error(f"--only takes parts of {PARTS}, or of {NF4_PARTS}")
    comp = competitions.get(args.competition)
    df = comp.read(rows_file(args.competition, ROWS[args.competition]), labelled=True).head(args.rows)
    model, tok = load_model("demo", detect(None, "cpu"), quant="nf4" if nf4 else None)
    repacked = repacked_copy() if nf4 else None
    prompts, labels = comp.examples(df, tok, 2048), list(comp.labels)

    def score(prune: bool = True, on=None):
        return timed_choice_run(on or model, tok, prompts, labels, prune_last_layer=prune)

    score()  # warm-up
    if repacked is not None:
        score(on=repacked)  # its first forward repacks it
    table = []
    for part in parts:
        times, probs = {"kit": [], "off": []}, {}
        for r in range(args.rounds):
            for arm in ("kit", "off") if r % 2 == 0 else ("off", "kit"):
                if arm == "kit":
                    seconds, probs[arm] = score()
                elif part == "layout4bit":
                    seconds, probs[arm] = score(on=repacked)
                else:
                    with without(part, model):
                        seconds, probs[arm] = score(prune=part != "pruning")
                times[arm].append(seconds)
        kit, off = (np.array(times[a]) for a in ("kit", "off"))
        table.append(
            {
                "part": part,
                "kit best s": round(float(kit.min()), 2),
                "off best s": round(float(off.min()), 2),
                "kit median s": round(float(np.median(kit)), 2),
                "off median s": round(float(np.median(off)), 2),
                "median gain": f"{np.median(off) / np.median(kit) - 1:+.1%}",
                "identical probs": bool(np.array_equal(probs["kit"], probs["off"])),
                "max prob diff": float(np.abs(np.asarray(probs["kit"]) - np.asarray(probs["off"])).max()),
                "top-1 agree": float(np.mean(np.argmax(probs["kit"], -1) == np.argmax(probs["off"], -1))),
            }
        )
    print(format_table(table))
    dtype, attn = detect(None, "cpu").dtype, model.config._attn_implementation
    tokens = float(np.mean([len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]))
    print(f"{len(prompts)} {args.competition} rows ({tokens:.0f} tokens a row), {args.rounds} alternating rounds")
    print(f"a part, profile {dtype}, the kit's attention {attn}")
    out = Path(args.results) / f"ablation_cpu_{args.competition}{'_nf4' if nf4 else ''}.json"
    meta = {"command": " ".join(["python", *sys.argv]), "commit": commit(), "machine": machine(), "dtype": dtype}
    meta.update(attention=attn, rows=len(prompts), mean_tokens=round(tokens, 1), rounds=args.rounds)
    out.write_text(json.dumps({**meta, "parts": table}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
