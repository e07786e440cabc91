"""Where a CPU choice-scoring run's time goes: each packed linear timed inside the model against the same
call replayed alone, and the rest of the forward by kind of op (torch.profiler).

    python bench/where_time.py [--rows 40]

Prints (1) per linear shape: seconds and GFLOP/s inside the model, GFLOP/s of the same calls replayed
alone (each call twice in a row, the second timed: its weight and buffers hot); (2) self CPU seconds per
kind of op over one profiled run; (3) the run's minor page faults and system time (getrusage). CPU only:
the packed linears it times exist only there.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from infer_bench import rows_file, timed_choice_run  # noqa: E402

from kaggle_kit import competitions  # noqa: E402
from kaggle_kit.hardware import detect  # noqa: E402
from kaggle_kit.infer.fast import packed as packed_lib  # noqa: E402
from kaggle_kit.models import load_model  # noqa: E402
from kaggle_kit.progress import format_table  # noqa: E402

KINDS = {  # profiler op name -> kind; anything else is "other elementwise"
    "mkldnn::_linear_pointwise": "linear",
    "aten::mm": "linear",
    "aten::addmm": "linear",
    "aten::bmm": "attention matmuls",
    "aten::_softmax": "softmax",
    "aten::copy_": "casts and copies",
    "aten::cat": "casts and copies",
}


def timed_linears(model) -> tuple[list, int]:
    """Wrap every packed linear of `model` so each call appends (tokens, in, out, seconds, weight, bias) to
    the list returned; also returns how many were wrapped."""
    calls, wrapped = [], 0

    def timed(weight, bias, x):
        t0 = time.perf_counter()
        y = packed_lib._packed_forward(weight, bias, x)
        calls.append((x.numel() // x.shape[-1], x.shape[-1], y.shape[-1], time.perf_counter() - t0, weight, bias))
        return y

    for m in model.modules():
        f = m.__dict__.get("forward")
        if packed_lib.is_packed(f):
            m.forward = partial(timed, *f.args)
            wrapped += 1
    return calls, wrapped


def replay_alone(calls: list) -> list[float]:
    """Seconds of each recorded call run again on its own, the second of two back-to-back runs."""
    import torch

    out = []
    for tokens, d_in, _, _, weight, bias in calls:
        x = torch.randn(tokens, d_in, dtype=torch.bfloat16)
        for _ in range(2):
            t0 = time.perf_counter()
            packed_lib._packed_forward(weight, bias, x)
            seconds = time.perf_counter() - t0
        out.append(seconds)
    return out


def main():
    import torch
    from torch.profiler import ProfilerActivity, profile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=40)
    args = ap.parse_args()
    profile_ = detect(None, "cpu")
    comp = competitions.get("science_exam")
    df = comp.read(rows_file("science_exam", "train.csv"), labelled=True).head(args.rows)
    model, tok = load_model("demo", profile_)
    prompts, labels = comp.examples(df, tok, 2048), list(comp.labels)
    calls, wrapped = timed_linears(model)
    if not wrapped:
        print(f"no packed linears in a {profile_.dtype} model: nothing to time per linear", file=sys.stderr)

    def run() -> float:
        return timed_choice_run(model, tok, prompts, labels)[0]

    run()  # warm-up
    calls.clear()
    before = resource.getrusage(resource.RUSAGE_SELF)
    wall = run()
    after = resource.getrusage(resource.RUSAGE_SELF)
    alone = replay_alone(calls)

    shapes = defaultdict(lambda: [0, 0.0, 0.0, 0])
    for (tokens, d_in, d_out, seconds, _, _), solo in zip(calls, alone):
        s = shapes[(d_in, d_out)]
        s[0] += 2 * tokens * d_in * d_out
        s[1] += seconds
        s[2] += solo
        s[3] += 1
    rows = [
        {
            "linear (in, out)": f"{d_in} x {d_out}",
            "calls": n,
            "s in model": round(t, 2),
            "GFLOP/s in model": round(flop / t / 1e9) if t else 0,
            "GFLOP/s alone": round(flop / solo / 1e9) if solo else 0,
        }
        for (d_in, d_out), (flop, t, solo, n) in sorted(shapes.items())
    ]
    flop, t, solo = (sum(s[i] for s in shapes.values()) for i in range(3))
    if t:
        rows.append(
            {
                "linear (in, out)": "all",
                "calls": len(calls),
                "s in model": round(t, 2),
                "GFLOP/s in model": round(flop / t / 1e9),
                "GFLOP/s alone": round(flop / solo / 1e9),
            }
        )
    print(format_table(rows))
    print(
        f"run: {wall:.2f} s wall for {args.rows} rows, linears {t:.2f} s ({t / wall:.0%}); "
        f"{after.ru_minflt - before.ru_minflt} minor page faults, "
        f"{after.ru_stime - before.ru_stime:.2f} s system time, {after.ru_utime - before.ru_utime:.2f} s user"
    )

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        profiled = run()
    kinds = defaultdict(float)
    for e in prof.key_averages():
        kinds[KINDS.get(e.key, "other elementwise")] += e.self_cpu_time_total / 1e6
    total = sum(kinds.values())
    print(
        format_table(
            [{"kind": k, "self CPU s": round(v, 2), "share": f"{v / total:.0%}"} for k, v in sorted(kinds.items())]
        )
    )
    other = sorted((e for e in prof.key_averages() if e.key not in KINDS), key=lambda e: -e.self_cpu_time_total)
    print("the largest of the other ops:")
    print(
        format_table(
            [
                {"op": e.key[:60], "calls": e.count, "self CPU s": round(e.self_cpu_time_total / 1e6, 3)}
                for e in other[:12]
            ]
        )
    )
    print(f"profiled run: {profiled:.2f} s wall, profile {profile_.dtype}, torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
