"""Where bf16 and fp32 choice scoring disagree: top-1 agreement by the fp32 margin between the two best options.

    python bench/bf16_agreement.py [--rows 200] [--where]

Rounding the weights and activations to bf16 moves each option's probability a little; a row flips when
that is more than the fp32 margin between its best two options. Prints agreement per margin bucket and the
size of the bf16 - fp32 probability differences, so a low overall agreement can be read: a model whose
answers are near-ties (SmolLM2-135M on Science Exam) flips often, a confident one rarely. Two bf16 runs:
the kit's (label logits in fp32 from the bf16 hidden state, infer/fast/label_head.py) and the model's own
bf16-rounded logits. Last, the agreement the precision cascade (--cascade-dtype float32) reaches when it
re-scores the least confident 0-30% of the kit's bf16 rows in fp32.

--where says which rounding costs the agreement: an fp32 model whose weights are rounded to bf16 (fp32
arithmetic), then the same with one kind of activation also rounded to bf16 at a time (the inputs of the
q/k/v, o, gate/up or down projections, every projection's output, the residual stream between layers),
and last every one of those rounded at once, to bf16 (which should land near the bf16 run: a check of the
emulation) and to fp16, whose 10-bit mantissa is what a T4 or P100 computes in (the kit's profile there)
but which this CPU has no fast arithmetic for: the agreement an fp16 GPU run can be expected to reach.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from infer_bench import rows_file  # noqa: E402

from kaggle_kit import competitions  # noqa: E402
from kaggle_kit.hardware import detect  # noqa: E402
from kaggle_kit.infer.primitives import choice_task, run_task  # noqa: E402
from kaggle_kit.jobs.ensemble import least_confident  # noqa: E402
from kaggle_kit.models import load_model  # noqa: E402
from kaggle_kit.progress import format_table  # noqa: E402

BUCKETS = [0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 1.01]  # fp32 probability margin, top-1 minus top-2
RECHECK = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]  # shares of least confident rows re-scored in fp32


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--where", action="store_true", help="also split the bf16 error by where it is rounded")
    args = ap.parse_args()
    comp = competitions.get("science_exam")
    df = comp.read(rows_file("science_exam", "train.csv"), labelled=True).head(args.rows)
    probs = {}
    for dtype, run, head in (("float32", "fp32", True), ("bfloat16", "bf16", True), ("bfloat16", "bf16 own", False)):
        model, tok = load_model("demo", detect(dtype, "cpu"))
        task = choice_task(model, tok, comp.examples(df, tok, 2048), list(comp.labels), fp32_head=head)
        probs[run], _ = run_task(task, model, progress=False)
    p32 = probs.pop("fp32")
    top2 = np.sort(p32, 1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    agree = {run: p32.argmax(1) == p.argmax(1) for run, p in probs.items()}
    rows = []
    for lo, hi in zip(BUCKETS, BUCKETS[1:]):
        sel = (margin >= lo) & (margin < hi)
        if sel.any():
            row = {"fp32 margin": f"[{lo}, {min(hi, 1.0)})", "rows": int(sel.sum())}
            row.update({f"agree {run}": float(a[sel].mean()) for run, a in agree.items()})
            rows.append(row)
    print(format_table(rows))
    print(f"\n{len(margin)} rows; fp32 margin median {np.median(margin):.4f}")
    for run, p in probs.items():
        diff = np.abs(p - p32)
        print(
            f"{run:9s} agreement {agree[run].mean():.3f}; |bf16 - fp32| per option: median {np.median(diff):.4f}, "
            f"95th percentile {np.percentile(diff, 95):.4f}, max {diff.max():.4f}"
        )
    # The precision cascade (--cascade-dtype float32): the kit's bf16 rows with the smallest bf16 margin
    # re-scored in fp32. Which share it takes to agree with fp32, and what that share costs.
    kit = probs["bf16"]
    sweep = []
    for share in RECHECK:
        p = kit.copy()
        rows_ = least_confident(kit, share)
        p[rows_] = p32[rows_]
        sweep.append({"fp32 re-check share": f"{share:.0%}", "agreement": float(np.mean(p.argmax(1) == p32.argmax(1)))})
    print()
    print(format_table(sweep))
    if args.where:
        print()
        print(format_table(where_it_flips(comp, df, p32)))


def _round(x, dtype: str = "bfloat16"):
    import torch

    return x.to(getattr(torch, dtype)).float()


def _rounding_hook(module, kind: str, dtype: str = "bfloat16"):
    """Round a module's input ("in") or output ("out") to `dtype` and back; returns the hook handle."""
    if kind == "in":
        return module.register_forward_pre_hook(lambda m, args: (_round(args[0], dtype),) + args[1:])
    return module.register_forward_hook(
        lambda m, args, out: _round(out, dtype) if not isinstance(out, tuple) else (_round(out[0], dtype),) + out[1:]
    )


def where_it_flips(comp, df, p32) -> list[dict]:
    """Agreement with fp32 of an fp32 model with bf16-rounded weights, alone and with each kind of activation
    rounded to bf16 as well: which roundings a bf16 run's flips come from; then all of them at once, in bf16
    and in fp16."""
    import torch

    model, tok = load_model("demo", detect("float32", "cpu"))
    exact = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(_round(p))
    layers = model.model.layers

    def linears(paths):
        return [layer.get_submodule(p) for layer in layers for p in paths]

    qkv = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
    gate_up = ["mlp.gate_proj", "mlp.up_proj"]
    points = {
        "weights only": [],
        "+ q/k/v inputs": [(m, "in") for m in linears(qkv)],
        "+ o_proj inputs": [(m, "in") for m in linears(["self_attn.o_proj"])],
        "+ gate/up inputs": [(m, "in") for m in linears(gate_up)],
        "+ down_proj inputs": [(m, "in") for m in linears(["mlp.down_proj"])],
        "+ every projection's output": [
            (m, "out") for m in linears([*qkv, "self_attn.o_proj", *gate_up, "mlp.down_proj"])
        ],
        "+ residual stream": [(layer, "out") for layer in layers],
    }
    everything = [hook for hooks in points.values() for hook in hooks]
    prompts = comp.examples(df, tok, 2048)
    rows = []

    def agreement(name, hooks, dtype):
        handles = [_rounding_hook(m, kind, dtype) for m, kind in hooks]
        try:
            p, _ = run_task(choice_task(model, tok, prompts, list(comp.labels)), model, progress=False)
        finally:
            for h in handles:
                h.remove()
        rows.append(
            {
                "rounded (fp32 arithmetic)": name,
                "agreement": float(np.mean(p.argmax(1) == p32.argmax(1))),
                "median |p - p32|": float(np.median(np.abs(p - p32))),
            }
        )

    for name, hooks in points.items():
        agreement(f"{name} (bf16)", hooks, "bfloat16")
    agreement("all of the above (bf16)", everything, "bfloat16")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(_round(exact[name], "float16"))
    agreement("weights only (fp16)", [], "float16")
    agreement("all of the above (fp16)", everything, "float16")
    return rows


if __name__ == "__main__":
    main()
