"""Where a CPU training run's memory goes: what the kit's first step (an epoch's largest batch, where the
peak is) keeps for backward, by module and shape, and the process's resident memory at its peak split
into the heap's live bytes, the heap's free gaps and the rest. The numbers behind docs/benchmarks.md's
training memory section; not a contender race (bench/train_bench.py is).

    python bench/train_memory.py [--model demo|demo:gemma3|FOLDER] [--loss answer|completion] [--batch 4]
        [--fast-paths on|off] [--results bench/results]

Kept tensors are counted once per storage, parameters left out (backward reads the weights, which exist
anyway); a tensor the recipes make again in backward (train/recompute.py) is counted apart. The heap's
figures are glibc's mallinfo2 for the main arena (live: in use plus mmapped chunks; free: gaps the heap
holds); "other" is the rest of the anonymous memory (Python's objects, other arenas, libraries' own).
Writes bench/results/train_memory_<device>[_<model>]_<loss>.json.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


class Sampler:
    """Samples RssAnon, RssFile and the main arena's live and free bytes every 20 ms, in MB."""

    def __init__(self):
        try:
            self.mallinfo = ctypes.CDLL(None).mallinfo2
            self.mallinfo.restype = MallInfo2
        except (OSError, AttributeError):  # not glibc >= 2.33: the heap's split is left out
            self.mallinfo = None
        self.samples = []
        threading.Thread(target=self._loop, daemon=True).start()

    def read(self) -> dict:
        status = Path("/proc/self/status").read_text().splitlines()
        rss = {k: int(line.split()[1]) / 1024 for line in status for k in ("RssAnon", "RssFile") if line.startswith(k)}
        out = {"anon": rss.get("RssAnon", 0.0), "file": rss.get("RssFile", 0.0)}
        if self.mallinfo is not None:
            m = self.mallinfo()
            out.update(heap_live=(m.uordblks + m.hblkhd) / 2**20, heap_free=m.fordblks / 2**20)
            out["other"] = out["anon"] - out["heap_live"] - out["heap_free"]
        return out

    def _loop(self):
        while True:
            self.samples.append(self.read())
            time.sleep(0.02)

    def peak(self) -> dict:
        """The first sample within 1% of the most resident memory: RSS stays near its peak once there (the
        heap keeps its gaps) while what is live in it falls, so the last would show the step's end."""
        top = max(s["anon"] + s["file"] for s in self.samples)
        return next(s for s in self.samples if s["anon"] + s["file"] >= 0.99 * top)

    def live_peak(self) -> dict:
        """The sample where the heap's live bytes were most (glibc only; else the RSS peak)."""
        return max(self.samples, key=lambda s: s.get("heap_live", 0.0))


class Kept:
    """The tensors the first training forward keeps for backward, by the innermost module that made them."""

    def __init__(self):
        self.sizes, self.counts, self.seen = collections.Counter(), collections.Counter(), set()
        self.params, self.names, self.stack, self.on = set(), {}, [], False

    def start(self, core):
        self.params = {p.untyped_storage().data_ptr() for p in core.parameters()}
        strip = re.compile(r"^(base_model\.model\.)+|\.base_layer$")
        self.names = {id(m): re.sub(r"\.\d+\.", ".*.", strip.sub("", n)) for n, m in core.named_modules()}
        self.on = True

    def record(self, tensor, what: str = "kept", key=None):
        """Count `tensor`'s storage once: by its address while it is kept (alive until backward), or by
        `key` (its recipe) when it is made again, and so freed and its address reused."""
        storage = tensor.untyped_storage()
        key = storage.data_ptr() if key is None else key
        if not self.on or key in self.params or key in self.seen:
            return
        self.seen.add(key)
        where = next((self.names[i] for i in reversed(self.stack) if i in self.names), "(outside a module)")
        group = (what, where or "(model)", tuple(tensor.shape), str(tensor.dtype).replace("torch.", ""))
        self.sizes[group] += storage.nbytes()
        self.counts[group] += 1

    def rows(self) -> list:
        return [
            {
                "": g[0],
                "module": g[1],
                "shape": "x".join(map(str, g[2])),
                "dtype": g[3],
                "count": self.counts[g],
                "MB": v / 2**20,
            }
            for g, v in self.sizes.most_common()
        ]


def instrument(kept: Kept):
    """Hooks that feed `kept` during the first training micro-batch's forward (step 1; the evaluation at
    step 0 runs the same loss without grad)."""
    import torch

    from kaggle_kit.train import recompute, step

    def enter(module, args):
        kept.stack.append(id(module))

    def leave(module, args, output):  # returns None: the output stays the module's
        if kept.stack:
            kept.stack.pop()

    torch.nn.modules.module.register_module_forward_pre_hook(enter)
    torch.nn.modules.module.register_module_forward_hook(leave)
    pack = recompute._pack

    def counted_pack(table, tensor):
        packed = pack(table, tensor)
        if packed is tensor:
            kept.record(tensor)
        else:
            kept.record(tensor, "made again", key=("recipe", id(packed[0])))
        return packed

    recompute._pack = counted_pack
    plain, calls = step.loss, []

    def first_loss(model, core, *args, **kwargs):
        if calls or not torch.is_grad_enabled():  # evaluations compute their loss without grad
            return plain(model, core, *args, **kwargs)
        calls.append(1)
        kept.start(core)

        def outer(tensor):  # the recipes' hooks are innermost where they run; these count the rest
            kept.record(tensor)
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(outer, lambda t: t):
            loss = plain(model, core, *args, **kwargs)
        kept.on = False
        return loss

    step.loss = first_loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--loss", default="answer", choices=["answer", "completion"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--fast-paths", default="on", choices=["on", "off"])
    ap.add_argument("--results", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    import train_bench

    from kaggle_kit.hardware import detect
    from kaggle_kit.progress import format_table

    sampler, kept = Sampler(), Kept()
    instrument(kept)
    profile = detect(None, None)
    run = argparse.Namespace(
        model=args.model,
        quant="nf4",
        device=profile.device,
        dtype=None,
        loss=args.loss,
        steps=2,
        batch=args.batch,
        fast_paths=args.fast_paths,
        gradient_checkpointing=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        train_bench.run_kit(run, Path(tmp))
    peak, live, rows = sampler.peak(), sampler.live_peak(), kept.rows()
    print(
        format_table(
            [{"": k, **{n: round(v) for n, v in s.items()}} for k, s in (("RSS peak", peak), ("live peak", live))]
        )
    )
    print(format_table(rows[:20]))
    total = {w: sum(r["MB"] for r in rows if r[""] == w) for w in ("kept", "made again")}
    print(
        f"kept for backward {total['kept']:.0f} MB, made again in backward {total['made again']:.0f} MB; "
        f"peak RSS {peak['anon'] + peak['file']:.0f} MB"
    )
    from meta import commit, machine, model_suffix

    out = Path(args.results) / f"train_memory_{profile.device}{model_suffix(args.model)}_{args.loss}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(["python", *sys.argv]), "commit": commit(), "machine": machine()}
    body = {**meta, "batch": args.batch, "peak_mb": peak, "live_peak_mb": live, "kept_mb": total, "kept": rows}
    out.write_text(json.dumps(body, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
