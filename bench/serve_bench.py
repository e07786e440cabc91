"""Serving load test on loopback: the kit's API against a plain-transformers server, same requests.

The baseline is what the challenge's reference samples did: one request at a time through
`model.generate` behind a lock. Both serve the demo model on 127.0.0.1 in this process; N requests
(real prompts: Science Exam questions and LMSYS prompts from ../shared/data, data/ when absent) come
from C concurrent clients. Prints errors, p50/p95 latency and throughput; writes bench/results/serve_<device>.json.

    python bench/serve_bench.py [--requests 200] [--clients 8] [--max-new-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meta import commit, machine  # noqa: E402

from kaggle_kit.config import ServeConfig  # noqa: E402
from kaggle_kit.models import load_model  # noqa: E402
from kaggle_kit.progress import format_table  # noqa: E402
from kaggle_kit.serve import ServerThread, build_app  # noqa: E402
from kaggle_kit.serve.schemas import ProcessRequest as Req  # noqa: E402 - the same request body


def prompts(n: int) -> list[str]:
    """n real prompts: Science Exam questions and LMSYS user prompts, cycled."""
    import pandas as pd

    shared = ROOT.parent / "shared" / "data"
    sci = shared / "science_exam" / "train.csv"
    sci = sci if sci.exists() else ROOT / "data" / "science_exam" / "train.csv"
    texts = list(pd.read_csv(sci)["prompt"].astype(str))
    lm = ROOT / "data" / "lmsys" / "train.csv"
    texts += [json.loads(p)[0] for p in pd.read_csv(lm)["prompt"] if json.loads(p) and json.loads(p)[0]]
    texts = [t[:600] for t in texts]
    return [texts[i % len(texts)] for i in range(n)]


def baseline_app(model, tok):
    """The reference samples' server: one request at a time through model.generate, behind a lock."""
    import torch
    from fastapi import FastAPI

    app = FastAPI()
    lock = threading.Lock()

    @app.post("/process")
    def process(req: Req):
        start = time.perf_counter()
        with lock, torch.inference_mode():
            x = tok(req.prompt, return_tensors="pt").to(model.device)
            out = model.generate(
                **x,
                max_new_tokens=req.max_new_tokens,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
                pad_token_id=tok.pad_token_id,
            )
            new = out.sequences[0, x.input_ids.shape[1] :]
            logp = [float(torch.log_softmax(s[0].float(), -1)[t]) for s, t in zip(out.scores, new)]
        return {
            "text": tok.decode(new, skip_special_tokens=True),
            "logprob": sum(logp),
            "request_time": time.perf_counter() - start,
        }

    return app


def load(url: str, texts: list[str], clients: int, max_new_tokens: int) -> dict:
    def one(prompt):
        body = {"prompt": prompt, "max_new_tokens": max_new_tokens, "temperature": 0, "echo_prompt": False}
        req = urllib.request.Request(
            url + "/process", json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
        )
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                ok = r.status == 200 and "text" in json.loads(r.read())
        except (urllib.error.URLError, OSError):
            ok = False
        return ok, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        got = list(pool.map(one, texts))
    wall = time.perf_counter() - start
    lat = np.array([t for _, t in got])
    return {
        "requests": len(texts),
        "errors": sum(not ok for ok, _ in got),
        "p50_s": float(np.percentile(lat, 50)),
        "p95_s": float(np.percentile(lat, 95)),
        "wall_s": wall,
        "req_per_s": len(texts) / wall,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=8)
    args = ap.parse_args(argv)

    model, tok = load_model("demo")
    texts = prompts(args.requests)
    results = {}
    for name, app in (
        ("plain transformers (one at a time)", baseline_app(model, tok)),
        ("kaggle_kit serve", build_app(model, tok, ServeConfig(max_batch=args.max_batch))),
    ):
        srv = ServerThread(app, port=free_port())
        try:
            load(srv.url, texts[: args.clients], args.clients, 2)  # warm-up
            results[name] = load(srv.url, texts, args.clients, args.max_new_tokens)
        finally:
            srv.stop()
    base = results["plain transformers (one at a time)"]["req_per_s"]
    rows = [
        {
            "server": n,
            "requests": r["requests"],
            "errors": r["errors"],
            "p50 s": f"{r['p50_s']:.2f}",
            "p95 s": f"{r['p95_s']:.2f}",
            "req/s": f"{r['req_per_s']:.2f}",
            "speed-up": f"{r['req_per_s'] / base:.2f}x",
        }
        for n, r in results.items()
    ]
    print(format_table(rows))
    device = str(model.device)
    out = ROOT / "bench" / "results" / f"serve_{device}.json"
    out.parent.mkdir(exist_ok=True)
    meta = {
        "command": " ".join(["python", *sys.argv]),
        "commit": commit(),
        "clients": args.clients,
        "max_new_tokens": args.max_new_tokens,
        "max_batch": args.max_batch,
        "machine": machine(),
        "device": device,
    }
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
