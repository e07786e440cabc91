"""TTA benchmark: shared-prefix views (infer/fast/views.py) against the same views run whole, in one run.

Contenders, each on the same rows, best of --repeat rounds (every contender once a round):
- kit, one view (no TTA): what TTA multiplies;
- kit, N views whole (`view_prefix=False`): the kit before shared heads, every view a whole forward;
- kit, N views with shared heads: each row's head once, each view only its own tokens;
- a good notebook's TTA: plain transformers in the kit's dtype, each view in length-sorted, left-padded
  batches of 8 with `logits_to_keep=1` (infer_bench.py's strongest peer), in a process of its own.
Settings: Science Exam with 5 option rotations, without and with retrieved context (top-3 of Radek's
facts, 512 tokens, bench/quality.py's retrieval row; and top-15, 1,536 tokens on --long-rows rows: the
2023 winners put long Wikipedia contexts before the question, shared by every view); LMSYS with the A/B
swap (its responses, most of a row, differ between the two views).
Also the share of the views' tokens that run once, how many batches ran in two stages (a batch saving
under views.MIN_SAVED of its padded tokens, or past a sliding window, runs whole views), and how close
shared heads come to whole views in the kit's dtype (in fp32 they are equal: tests/unit/test_views.py,
tests/integration/test_families.py).

    python bench/tta_bench.py [--rows 100] [--long-rows 30] [--lmsys-rows 40] [--views 5] [--repeat 2] [--model demo]
        [--device cpu|cuda] [--dtype ...]

Writes bench/results/tta_<device>[_<model>].json with the command, commit and machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from infer_bench import peer_sorted8, plain_model, rows_file, timed_rounds  # noqa: E402
from meta import commit, machine, model_suffix  # noqa: E402

from kaggle_kit import competitions  # noqa: E402
from kaggle_kit.hardware import detect  # noqa: E402
from kaggle_kit.infer import label_token_ids  # noqa: E402
from kaggle_kit.infer.engine import encode  # noqa: E402
from kaggle_kit.infer.fast.views import ViewPrefix, mapped_back  # noqa: E402
from kaggle_kit.infer.primitives import choice_task, run_task  # noqa: E402
from kaggle_kit.models import load_model  # noqa: E402
from kaggle_kit.progress import format_table  # noqa: E402


def _peer_worker(conn, name: str, device: str, dtype: str, tok):
    """The plain model in its own process: runs peer_sorted8 on each list of prompts sent, until None."""
    model = plain_model(name, device, dtype)
    conn.send("ready")
    while (job := conn.recv()) is not None:
        prompts_per_view, label_ids = job
        conn.send([peer_sorted8(model, tok, prompts, label_ids) for prompts in prompts_per_view])


def notebook_tta(outputs: list, views: list, n: int) -> np.ndarray:
    """A notebook's TTA average of per-view probabilities (views mapped back, rows sitting a view out
    skipped), as the kit averages them."""
    probs, counted = outputs[0].copy(), np.ones((n, 1))
    for out, (_, perm) in zip(outputs[1:], views):
        probs = probs + mapped_back(out, perm, list(range(n)), counted)
    return probs / counted


def setting(name, model, tok, prompts, views, labels, masks, peer, repeat) -> list[dict]:
    """The four contenders on one setting; rows for the table."""
    label_ids = label_token_ids(tok, labels)

    def kit(tta: bool, shared: bool, parts: list | None = None):
        task = choice_task(model, tok, prompts, labels, views=views if tta else None, masks=masks, view_prefix=shared)
        if parts is not None:
            parts.append(task.parts[-1])  # the row heads, whose counters say how each batch ran
        return run_task(task, model, progress=False)[0]

    def plain():
        peer.send(([prompts] + [v for v, _ in views], label_ids))
        return notebook_tta(peer.recv(), views, len(prompts))

    warm: list = []
    kit(True, True, warm)  # warm-up
    res = timed_rounds(
        {
            "one view": lambda: kit(False, False),
            "views whole": lambda: kit(True, False),
            "views shared": lambda: kit(True, True),
            "notebook": plain,
        },
        repeat,
    )
    ids = [encode(tok, prompts, 2048)] + [encode(tok, v, 2048) for v, _ in views]
    heads = ViewPrefix(model, ids)
    whole, shared = res["views whole"], res["views shared"]
    gap = float(np.nanmax(np.abs(whole[0] - shared[0])))
    agree = float(np.mean(whole[0].argmax(1) == shared[0].argmax(1)))
    n_views = len(views) + 1
    out = []
    for key, label in (
        ("one view", "kit, one view"),
        ("views whole", f"kit, {n_views} views whole"),
        ("views shared", f"kit, {n_views} views, shared heads"),
        ("notebook", f"notebook TTA: plain, sorted batches of 8, {n_views} views"),
    ):
        seconds = res[key][1]
        out.append(
            {
                "setting": name,
                "run": label,
                "seconds": seconds,
                "rows/s": len(prompts) / seconds,
                "x one view": seconds / res["one view"][1],
                "speed-up vs whole views": res["views whole"][1] / seconds,
            }
        )
    out[2].update(
        {
            "tokens run once": heads.saved(),
            "mean tokens a row": float(np.mean([len(r) for r in ids[0]])),
            "mean head": float(np.mean(heads.heads)) if heads.heads else 0.0,
            "global prefix": heads.shared.length,
            "batches in two stages": warm[0].batches,
            "batches whole (saving < MIN_SAVED)": warm[0].unsaved_batches,
            "batches whole (past the window)": warm[0].whole_batches,
            "max |p shared - p whole|": gap,
            "top1 agree shared vs whole": agree,
        }
    )
    return out


def science_context(df, tok, comp, k: int = 3, tokens: int = 512) -> list[str]:
    """Top-k of Radek's facts (question + right answer) per question, at most `tokens` tokens; k=3 and 512
    tokens are bench/quality.py's retrieval row."""
    import pandas as pd

    from kaggle_kit.config.predict import PredictConfig
    from kaggle_kit.playbooks.retrieval import contexts

    extra = pd.read_csv(rows_file("science_exam", "extra_radek_6000_first3000.csv"), dtype=str, keep_default_na=False)
    facts = ROOT / "bench" / "results" / ".facts.csv"
    pd.DataFrame({"text": [f"{r['prompt']} {r[r['answer']]}" for r in extra.to_dict("records")]}).to_csv(facts)
    cfg = SimpleNamespace(
        context=str(facts), context_column="text", embedder=PredictConfig.embedder, context_k=k, context_tokens=tokens
    )
    try:
        return contexts(comp.queries(df), tok, cfg)
    finally:
        facts.unlink()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--long-rows", type=int, default=30, help="rows of the long-context setting")
    ap.add_argument("--lmsys-rows", type=int, default=40)
    ap.add_argument("--views", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    args = ap.parse_args()

    profile = detect(args.dtype, args.device)
    model, tok = load_model(args.model, profile)
    ctx = mp.get_context("spawn")
    conn, child = ctx.Pipe()
    proc = ctx.Process(target=_peer_worker, args=(child, args.model, profile.device, profile.dtype, tok), daemon=True)
    proc.start()
    if conn.recv() != "ready":
        raise RuntimeError("the peer's process did not start")

    rows = []
    comp = competitions.get("science_exam")
    df = comp.read(rows_file("science_exam", "train.csv"), labelled=True).head(args.rows)
    labels = list(comp.labels)
    long = df.head(args.long_rows)
    for name, part, extra in (
        ("science_exam", df, {}),
        ("science_exam + context", df, {"context": science_context(df, tok, comp)}),
        ("science_exam + long context", long, {"context": science_context(long, tok, comp, 15, 1536)}),
    ):
        prompts = comp.examples(part, tok, 2048, **extra)
        views = comp.views(part, tok, 2048, n=args.views, **extra)
        rows += setting(name, model, tok, prompts, views, labels, comp.masks(part), conn, args.repeat)
        print(format_table(rows[-4:]), flush=True)
    lm = competitions.get("lmsys")
    ldf = lm.read(rows_file("lmsys", "train.csv"), labelled=True).head(args.lmsys_rows)
    lprompts = lm.examples(ldf, tok, 2048)
    rows += setting("lmsys A/B swap", model, tok, lprompts, lm.views(ldf, tok, 2048), list(lm.labels), None, conn, 1)
    conn.send(None)
    proc.join(timeout=60)

    print(format_table(rows))
    out = ROOT / "bench" / "results" / f"tta_{profile.device}{model_suffix(args.model)}.json"
    meta = {"command": " ".join(["python", *sys.argv]), "commit": commit(), "model": args.model}
    meta.update(machine=machine(), device=profile.device, dtype=profile.dtype)
    out.write_text(json.dumps({**meta, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
