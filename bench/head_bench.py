"""The output layer's product on the slice `logits_to_keep=1` takes from a batch (hidden[:, -1:], not
contiguous), with a frozen weight (a peft adapter loaded for inference, QLoRA's base) and a trainable one,
against the same product on a contiguous copy (what infer/fast/output_layer.contiguous_head hands it).
The heads are the two demo models' shapes (SmolLM2: 49,152 x 576; Gemma-3-270M: 262,144 x 640), random
weights, `--rows` rows of 200 positions. Writes bench/results/head_<device>.json.

    python bench/head_bench.py [--rows 8] [--dtype bfloat16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from meta import commit, machine  # noqa: E402

HEADS = {"SmolLM2-135M": (49152, 576), "Gemma-3-270M": (262144, 640)}


def best_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def on_a_copy(x, w):
    """The product as contiguous_head hands it over: the last positions copied first (timed with it)."""
    import torch

    return torch.nn.functional.linear(x[:, -1:].contiguous(), w)


def main():
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    out = []
    for name, (vocab, hidden) in HEADS.items():
        x = torch.randn(args.rows, 200, hidden, dtype=dtype, device=args.device)
        for frozen in (True, False):
            w = torch.nn.Parameter(torch.randn(vocab, hidden, dtype=dtype, device=args.device), not frozen)
            with torch.inference_mode():
                sliced = best_ms(partial(torch.nn.functional.linear, x[:, -1:], w), args.repeat)
                copied = best_ms(partial(on_a_copy, x, w), args.repeat)
            row = {"head": name, "weight": "frozen" if frozen else "trainable", "sliced_ms": sliced}
            row.update(contiguous_ms=copied, ratio=sliced / copied)
            out.append(row)
            print(f"{name:13s} {row['weight']:9s} slice {sliced:9.1f} ms, contiguous {copied:7.1f} ms", flush=True)
    meta = {"command": " ".join(["python", *sys.argv]), "commit": commit(), "torch": torch.__version__}
    meta.update(machine=machine(), device=args.device, dtype=args.dtype)
    path = ROOT / "bench" / "results" / f"head_{args.device}.json"
    path.write_text(json.dumps({**meta, "rows": args.rows, "results": out}, indent=2))
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
