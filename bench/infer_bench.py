"""Inference benchmark: the kit's engine against plain-transformers peers, in one run, same rows.

Peers are what public notebooks do: (1) one row at a time in fp32 with full logits, (2) a fixed batch
of 8 rows in file order, padded, full logits; and what a good notebook does, in the kit's dtype (bf16 on
this CPU, fp16 on a T4) with `logits_to_keep=1`: (3) one row at a time, (4) length-sorted, left-padded
batches of 8. "vs best peer" is against the fastest of them. They run in a process of their own that
never loads a kit model, so none of the kit's process-wide CPU settings (infer/fast/heap.py's malloc
thresholds) reach them. `--model` takes what `--model` takes elsewhere ('demo:gemma3', a folder).
Rows are real: Science Exam questions from ../shared/data (data/ when absent) for choice scoring, Prompt
Recovery rows for generation. Prints a table and writes bench/results/infer_<device>.json.

    python bench/infer_bench.py [--rows 100] [--gen-rows 16] [--repeat 3] [--recheck 0.2] [--device cpu|cuda]
        [--dtype ...] [--model demo|demo:gemma3|FOLDER] [--results bench/results]

Each timing is the best of --repeat rounds, every contender once per round (a shared 2-core VM drifts by
10-20% from minute to minute). Besides top-1 agreement with the fp32 peer, the MAP@3 of kit and peer on
the labelled rows says whether the kit's dtype costs any score; the kit also runs in fp32, to separate the
engine's gain from bf16's, and as the dtype cascade (bf16 on every row, the --recheck share with the
smallest top-1/top-2 margin again in fp32), the price of near-fp32 agreement.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from matmul_peak import peak_gflops  # noqa: E402
from meta import commit, machine, model_suffix  # noqa: E402

from kaggle_kit import competitions  # noqa: E402
from kaggle_kit.hardware import detect  # noqa: E402
from kaggle_kit.infer import generate, score_choices  # noqa: E402
from kaggle_kit.infer.primitives import choice_task, run_task  # noqa: E402
from kaggle_kit.jobs.ensemble import least_confident  # noqa: E402
from kaggle_kit.models import load_model  # noqa: E402
from kaggle_kit.progress import format_table  # noqa: E402


def rows_file(comp: str, shared_name: str) -> Path:
    shared = ROOT.parent / "shared" / "data" / comp / shared_name
    return shared if shared.exists() else ROOT / "data" / comp / "train.csv"


def timed_choice_run(model, tok, prompts, labels, **task_kw) -> tuple[float, np.ndarray]:
    """(seconds, probabilities) of one choice-scoring run through the engine, the task built untimed."""
    task = choice_task(model, tok, prompts, labels, **task_kw)
    start = time.perf_counter()
    probs, _ = run_task(task, model, progress=False)
    return time.perf_counter() - start, probs


def plain_model(name: str, device: str, dtype: str = "float32"):
    """What a notebook loads: the same weights with transformers' defaults (SDPA attention, or eager where
    the model soft-caps; the kit's load_model gives a CPU model its own blocked attention)."""
    import torch
    from transformers import AutoModelForCausalLM

    from kaggle_kit.models import attention_implementation, load_config, resolve_model

    path = resolve_model(name)
    attn = attention_implementation(load_config(path), device, fast_paths=False)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), local_files_only=True, attn_implementation=attn
    )
    return model.to(device).eval()


def _special(tok, text: str) -> bool:
    """Whether the tokenizer should add its special tokens (BOS) to `text`, as the kit's encode does and a
    notebook's default tokenizer call does: yes unless the chat template already wrote BOS. Gemma without
    BOS computes something else entirely."""
    return bool(tok.bos_token) and not text.startswith(tok.bos_token)


def peer_one_row(model, tok, prompts, label_ids):
    """The public-notebook loop: one prompt at a time, full logits, last position."""
    import torch

    out = []
    with torch.no_grad():
        for p in prompts:
            x = tok(p, return_tensors="pt", add_special_tokens=_special(tok, p)).to(model.device)
            logits = model(**x).logits[0, -1].float()
            out.append(torch.softmax(logits[label_ids], -1).cpu().numpy())
    return np.array(out)


def peer_batch8(model, tok, prompts, label_ids):
    """Fixed batches of 8 in file order, padded to the batch's longest, full logits."""
    import torch

    out = []
    tok.padding_side = "left"
    with torch.no_grad():
        for k in range(0, len(prompts), 8):
            batch = prompts[k : k + 8]
            x = tok(batch, return_tensors="pt", padding=True, add_special_tokens=_special(tok, batch[0]))
            logits = model(**x.to(model.device)).logits[:, -1].float()
            out += list(torch.softmax(logits[:, label_ids], -1).cpu().numpy())
    return np.array(out)


def peer_one_row_last(model, tok, prompts, label_ids):
    """A good notebook's loop: one prompt at a time, only the last position's logits."""
    import torch

    out = []
    with torch.no_grad():
        for p in prompts:
            x = tok(p, return_tensors="pt", add_special_tokens=_special(tok, p)).to(model.device)
            logits = model(**x, logits_to_keep=1).logits[0, -1].float()
            out.append(torch.softmax(logits[label_ids], -1).cpu().numpy())
    return np.array(out)


def peer_sorted8(model, tok, prompts, label_ids):
    """A good notebook's batches: rows sorted by length, 8 at a time, left-padded, last position only;
    results put back in file order."""
    import torch

    lengths = [len(tok(p, add_special_tokens=_special(tok, p))["input_ids"]) for p in prompts]
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(prompts), len(label_ids)))
    tok.padding_side = "left"
    with torch.no_grad():
        for k in range(0, len(order), 8):
            idx = order[k : k + 8]
            batch = [prompts[i] for i in idx]
            x = tok(batch, return_tensors="pt", padding=True, add_special_tokens=_special(tok, batch[0]))
            logits = model(**x.to(model.device), logits_to_keep=1).logits[:, -1].float()
            out[idx] = torch.softmax(logits[:, label_ids], -1).cpu().numpy()
    return out


def peer_generate_one_row(model, tok, prompts, max_new_tokens):
    import torch

    texts = []
    with torch.no_grad():
        for p in prompts:
            x = tok(p, return_tensors="pt", add_special_tokens=_special(tok, p)).to(model.device)
            y = model.generate(**x, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            texts.append(tok.decode(y[0, x["input_ids"].shape[1] :], skip_special_tokens=True))
    return texts


def _peer_worker(conn, name: str, device: str, dtype: str, tok, prompts, label_ids, gprompts, max_new_tokens):
    """The peers' process: load the plain models (fp32, and the kit's dtype), then run each peer named on
    `conn` until None comes."""
    peer = plain_model(name, device)
    half = plain_model(name, device, dtype) if dtype != "float32" else peer
    runs = {
        "one": lambda: peer_one_row(peer, tok, prompts, label_ids),
        "b8": lambda: peer_batch8(peer, tok, prompts, label_ids),
        "one16": lambda: peer_one_row_last(half, tok, prompts, label_ids),
        "s8": lambda: peer_sorted8(half, tok, prompts, label_ids),
        "gone": lambda: peer_generate_one_row(peer, tok, gprompts, max_new_tokens),
    }
    peer_one_row(peer, tok, prompts[:1], label_ids)  # warm-up, as the kit gets one
    peer_one_row_last(half, tok, prompts[:1], label_ids)
    conn.send("ready")
    while (name := conn.recv()) is not None:
        conn.send(runs[name]())


class PeerProcess:
    """The peers in a spawned process; `run(name)` returns that peer's result (its time includes a pipe
    round trip of a few kilobytes)."""

    def __init__(self, *args):
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_peer_worker, args=(child, *args), daemon=True)
        self._proc.start()
        if self._conn.recv() != "ready":
            raise RuntimeError("the peers' process did not start")

    def run(self, name: str):
        self._conn.send(name)
        return self._conn.recv()

    def close(self):
        self._conn.send(None)
        self._proc.join(timeout=60)


def timed_rounds(fns: dict, repeat: int) -> dict:
    """{name: (result, best seconds)}: every function runs once per round, `repeat` rounds, so a VM that
    slows down for a minute slows all of them alike instead of whichever happened to run then."""
    best = {name: (None, float("inf")) for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out = fn()
            best[name] = (out, min(best[name][1], time.perf_counter() - t0))
    return best


def map3(probs, answers, labels) -> float:
    from kaggle_kit.metrics import map_at_k

    top3 = [[labels[j] for j in np.argsort(-p, kind="stable")[:3]] for p in probs]
    return map_at_k(top3, list(answers), 3)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--gen-rows", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None, help="the kit's dtype (default: hardware profile)")
    ap.add_argument("--model", default="demo", help="demo (SmolLM2), demo:gemma3, or a model folder")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; each timing is its best round")
    ap.add_argument(
        "--recheck", type=float, default=0.2, help="share of least confident rows the dtype cascade re-scores in fp32"
    )
    ap.add_argument("--results", default=str(ROOT / "bench" / "results"), help="folder the JSON is written to")
    args = ap.parse_args()

    profile = detect(args.dtype, args.device)
    kit_model, tok = load_model(args.model, profile)
    # in an fp32 profile (a CPU without native bf16) the kit's model is the fp32 one: loaded and timed once
    same32 = profile.dtype == "float32"
    fp32_model = kit_model if same32 else load_model(args.model, detect("float32", profile.device))[0]
    comp = competitions.get("science_exam")
    df = comp.read(rows_file("science_exam", "train.csv"), labelled=True).head(args.rows)
    prompts = comp.examples(df, tok, 2048)
    from kaggle_kit.infer import label_token_ids

    label_ids = label_token_ids(tok, list(comp.labels))
    n_tokens = sum(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    non_emb = sum(p.numel() for n, p in kit_model.named_parameters() if "embed" not in n)

    labels = list(comp.labels)
    score_choices(kit_model, tok, prompts[:2], labels, progress=False)  # warm-up
    r = args.repeat
    pr = competitions.get("prompt_recovery")
    pdf = pr.read(rows_file("prompt_recovery", "pedromb_gemma7b_kaggle_format.csv"), labelled=True).head(args.gen_rows)
    gprompts = pr.examples(pdf, tok, 2048)
    n_new = args.max_new_tokens
    peers = PeerProcess(args.model, profile.device, profile.dtype, tok, prompts, label_ids, gprompts, n_new)

    def kit_recheck():
        """The dtype cascade (--cascade-dtype float32) in this process: the kit's dtype on every row, then
        the least confident share again in fp32 (the CLI loads the fp32 model in its own process)."""
        probs = np.array(score_choices(kit_model, tok, prompts, labels, progress=False)[0])
        rows = least_confident(probs, args.recheck)
        probs[rows] = score_choices(fp32_model, tok, [prompts[i] for i in rows], labels, progress=False)[0]
        return probs

    recheck = profile.dtype != "float32" and args.recheck > 0
    res = timed_rounds(
        {
            "kit": lambda: score_choices(kit_model, tok, prompts, labels, progress=False)[0],
            **({"kitc": kit_recheck} if recheck else {}),
            **({} if same32 else {"kit32": lambda: score_choices(fp32_model, tok, prompts, labels, progress=False)[0]}),
            "one": lambda: peers.run("one"),
            "b8": lambda: peers.run("b8"),
            "one16": lambda: peers.run("one16"),
            "s8": lambda: peers.run("s8"),
            "gkit": lambda: generate(kit_model, tok, gprompts, max_new_tokens=n_new, progress=False)[0],
            "gone": lambda: peers.run("gone"),
        },
        r,
    )
    peers.close()
    res.setdefault("kit32", res["kit"])
    (kit_probs, t_kit), (kit32, t_kit32), (one, t_one), (b8, t_b8) = (res[k] for k in ("kit", "kit32", "one", "b8"))
    (gen_kit, t_gkit), (gen_one, t_gone) = res["gkit"], res["gone"]
    answers = df["answer"].tolist()
    peak = peak_gflops(profile.dtype, device=profile.device)
    limit_tok_s = peak * 1e9 / (2 * non_emb)

    gen_agree = float(np.mean([a == b.strip() for a, b in zip(gen_kit, gen_one)]))
    t_best = min(res[k][1] for k in ("one", "b8", "one16", "s8"))

    def choice_row(run: str, probs, seconds: float) -> dict:
        """One choice-scoring line: speed, ratio to the one-row peer, top-1 agreement with it, MAP@3."""
        return {
            "run": run,
            "rows/s": len(prompts) / seconds,
            "tok/s": n_tokens / seconds,
            "vs one-row": t_one / seconds,
            "vs best peer": t_best / seconds,
            "top1 agree fp32": float(np.mean(probs.argmax(1) == one.argmax(1))),
            "MAP@3": map3(probs, answers, labels),
        }

    rows = [
        choice_row(f"kit score_choices ({profile.dtype})", kit_probs, t_kit),
        *(
            [choice_row(f"kit {profile.dtype} + fp32 re-check of least confident {args.recheck:.0%}", *res["kitc"])]
            if recheck
            else []
        ),
        *([] if same32 else [choice_row("kit score_choices (float32)", kit32, t_kit32)]),
        choice_row("peer one row fp32", one, t_one),
        choice_row("peer batch 8 fp32", b8, t_b8),
        choice_row(f"peer one row {profile.dtype}, last logits", *res["one16"]),
        choice_row(f"peer length-sorted batch 8 {profile.dtype}, last logits", *res["s8"]),
        {
            "run": f"kit generate ({profile.dtype})",
            "rows/s": len(gprompts) / t_gkit,
            "tok/s": None,
            "vs one-row": t_gone / t_gkit,
            "top1 agree fp32": gen_agree,
        },
        {
            "run": "peer generate one row fp32",
            "rows/s": len(gprompts) / t_gone,
            "tok/s": None,
            "vs one-row": 1.0,
            "top1 agree fp32": 1.0,
        },
    ]
    print(format_table(rows))
    print(
        f"\nmatmul peak ({profile.dtype}, {profile.device}): {peak:.1f} GFLOP/s -> limit "
        f"{limit_tok_s:.0f} tok/s for {non_emb / 1e6:.1f}M non-embedding params; kit reaches "
        f"{100 * n_tokens / t_kit / limit_tok_s:.1f}%"
    )
    print(
        f"{len(prompts)} choice rows ({n_tokens} tokens), {len(gprompts)} generation rows x {args.max_new_tokens} "
        f"new tokens; generation 'agree' = identical text; best of {r} interleaved rounds"
    )
    out = Path(args.results) / f"infer_{profile.device}{model_suffix(args.model)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "command": " ".join(["python", *sys.argv]),
                "commit": commit(),
                "model": args.model,
                "machine": machine(),
                "profile": profile.dtype,
                "peak_gflops": peak,
                "limit_tok_s": limit_tok_s,
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
