"""When fit() hands glibc's free heap pages back on a CPU: RSS over a run and the time a step takes.

Training on a CPU frees and allocates activations of a new size every step; glibc keeps the gaps, so
without `release_heap` (malloc_trim) RSS creeps up while live memory stays flat. `train/loop.py` hands
the heap back when RSS at a step's end has grown by `HEAP_GROWTH` (a fraction) past the peak RSS of
its first two steps (`infer/fast/heap.py` HeapWatch). This runs the kit's fit() (Science Exam, SmolLM2
by default, nf4, the profile's dtype, `loss: answer`) once per policy, each in its own process with RSS
sampled every 0.5 s, and reports seconds a step (steps 2..N), peak RSS, RSS at four points of the run,
the trims and the working set the growth is measured from.

    python bench/heap_bench.py                          # never, the default growth (1.0), every step
    python bench/heap_bench.py --policy 1.0 --steps 40  # one policy: a growth past the first steps' peak RSS
    python bench/heap_bench.py --policy 1e9 0.5 --rounds 3  # never and 0.5 alternating, 3 times each
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

NEVER, EVERY = 1e9, -1.0  # a growth no run reaches, and one any step past the settling ones passes


def run_one(args) -> dict:
    """fit() with the heap handed back past a growth of `args.only`; the figures as a dict."""
    import train_bench

    from kaggle_kit.infer.fast import heap
    from kaggle_kit.train import loop

    loop.HEAP_GROWTH = args.only
    trims, release, watches, watch = [], heap.release_heap, [], heap.HeapWatch
    heap.HeapWatch = lambda *a, **k: watches.append(watch(*a, **k)) or watches[-1]  # its working set
    heap.release_heap = lambda: trims.append(1) or release()
    samples, done = [], threading.Event()

    def sample():
        while not done.wait(0.5):
            samples.append((time.monotonic(), heap.rss_mb()))

    kit = argparse.Namespace(
        model=args.model, quant="nf4", device="cpu", dtype=None, loss="answer", batch=args.batch,
        steps=args.steps, fast_paths="on", gradient_checkpointing=False,
    )  # fmt: skip
    import kaggle_kit.jobs.training as training

    seen, fit = {}, training.fit

    def timed_fit(*a, **k):  # where the steps start: after the model loads
        seen["start"] = time.monotonic()
        return fit(*a, **k)

    training.fit = timed_fit
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    with tempfile.TemporaryDirectory() as tmp:
        res = train_bench.run_kit(kit, Path(tmp))
    done.set()
    thread.join()
    return {
        "seconds_a_step": res["seconds"] / (args.steps - 1),
        "peak_rss_mb": heap.peak_rss_mb(),
        "rss_mb_at": _rss_at(samples, seen["start"]),
        "trims": len(trims),
        "working_set_mb": round(watches[0].mark) if watches else None,
        "tokens": res["tokens"],
    }


def _rss_at(samples: list, start: float) -> dict:
    """RSS a quarter, half, three quarters and all of the way from fit()'s start (its step-0 evaluation
    included) to the last sample: the sample nearest each point in time."""
    if not samples:
        return {}
    end = samples[-1][0]
    out = {}
    for share in (0.25, 0.5, 0.75, 1.0):
        t = start + share * (end - start)
        out[f"{share:.0%} of the run"] = round(min(samples, key=lambda s: abs(s[0] - t))[1])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", type=float, nargs="*", default=None, help="RSS growths: 1e9 never, -1 every")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--rounds", type=int, default=1, help="run the policies in turn this many times")
    ap.add_argument("--only", type=float, help=argparse.SUPPRESS)  # one run, in a child process
    ap.add_argument("--results", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    if args.only is not None:
        print(json.dumps(run_one(args)))
        return
    rows = []
    names = {NEVER: "never", EVERY: "every step"}
    policies = args.policy or [NEVER, 1.0, EVERY]
    for n, growth in enumerate(policies * args.rounds):
        cmd = [sys.executable, __file__, "--only", str(growth), "--steps", str(args.steps)]
        cmd += ["--batch", str(args.batch), "--model", args.model]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        res = json.loads(out)
        rows.append({"hand the heap back": names.get(growth, f"past x{1 + growth:g}"), **res})
        if args.rounds > 1:
            rows[-1] = {"round": n // len(policies) + 1, **rows[-1]}
        print(rows[-1], flush=True)
    from meta import commit, machine, model_suffix

    from kaggle_kit.progress import format_table

    print(format_table([{k: v for k, v in r.items() if k != "rss_mb_at"} for r in rows]))
    rounds = f"_rounds{args.rounds}" if args.rounds > 1 else ""
    out = Path(args.results) / f"heap_cpu{model_suffix(args.model)}{rounds}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(["python", *sys.argv]), "commit": commit(), "machine": machine()}
    meta["shape"] = f"{args.steps} steps x batch {args.batch}, 512-token cap, nf4, loss answer, Science Exam"
    out.write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
