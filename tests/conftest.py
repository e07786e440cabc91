"""Shared fixtures: paths to data/, the real demo model (SmolLM2-135M-Instruct) loaded once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kaggle_kit.hardware import cpu_bf16_is_fast

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `make test` runs one pytest worker per core (pytest-xdist): each worker, and every process it starts,
# gets its share of the cores as torch threads, or the workers' thread pools fight over the same cores
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _share)))


# A real model run in bf16 on purpose: on a CPU without native bf16 (AVX2 only) torch emulates it ~100x
# slower than fp32 (0.7 against 68 GFLOP/s on a 2-core AVX2 EPYC) and the kit's profile there is fp32, so
# these tests (364 s and 211 s for the two largest on that VM, where the suite took 93 min) run only where
# bf16 is the profile.
native_bf16 = pytest.mark.skipif(not cpu_bf16_is_fast(), reason="this CPU emulates bf16 (its profile is fp32)")


def write_subset(comp_name: str, tmp_path: Path, n: int, labelled: bool = False, split: str = "train") -> Path:
    """The first n rows of data/<comp>/<split>.csv (tiled with fresh ids if n is larger), as a new CSV."""
    import pandas as pd

    df = pd.read_csv(DATA / comp_name / f"{split}.csv", dtype=str, keep_default_na=False)
    reps = -(-n // len(df))
    df = pd.concat([df] * reps, ignore_index=True).head(n)
    df["id"] = [str(1000 + i) for i in range(n)]
    if not labelled:
        label_cols = {
            "science_exam": ["answer"],
            "prompt_recovery": ["rewrite_prompt"],
            "lmsys": ["model_a", "model_b", "winner_model_a", "winner_model_b", "winner_tie"],
        }
        df = df.drop(columns=[c for c in label_cols[comp_name] if c in df.columns])
    path = tmp_path / f"{comp_name}_{split}_{n}{'_labelled' if labelled else ''}.csv"
    df.to_csv(path, index=False)
    return path


def shortest_lmsys_rows(df):
    """LMSYS rows, shortest first (prompt + both responses, in characters; ties in file order): a test that
    checks which rows are predicted, not what, reads a fraction of the first rows' tokens."""
    chars = df[["prompt", "response_a", "response_b"]].sum(axis=1).str.len()
    return df.loc[chars.sort_values(kind="stable").index]


def alpaca_valid(tmp_path: Path, n: int) -> Path:
    """The first n records of data/alpaca/public_test.json, as a new JSON file (a short evaluation)."""
    path = tmp_path / f"valid_{n}.json"
    path.write_text(json.dumps(json.loads((DATA / "alpaca" / "public_test.json").read_text())[:n], ensure_ascii=False))
    return path


def tiny_llama(**config):
    """A randomly initialised Llama of a few layers with grouped-query attention (no files, no download),
    eval mode; `config` overrides LlamaConfig fields (attn_implementation, num_hidden_layers, ...)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base = dict(vocab_size=128, hidden_size=96, intermediate_size=128, num_hidden_layers=2)
    base.update(num_attention_heads=6, num_key_value_heads=2)
    return LlamaForCausalLM(LlamaConfig(**{**base, **config})).eval()


@pytest.fixture(scope="session")
def demo_model():
    """(model, tokenizer) of the demo model in the hardware profile's dtype."""
    from kaggle_kit.hardware import detect
    from kaggle_kit.models import load_model

    return load_model("demo", detect())


@pytest.fixture(scope="session")
def demo_model_fp32():
    """(model, tokenizer) of the demo model in fp32, for tests that compute the same numbers two ways
    (batched vs one by one, prefix cache vs none, a view vs its mirror): in bf16 each way rounds its
    own way and near-ties flip, which would hide the bug such a test looks for."""
    from kaggle_kit.hardware import detect
    from kaggle_kit.models import load_model

    return load_model("demo", detect("float32"))


class KaggleDouble:
    """A loopback stand-in for Kaggle's API, reached through the official client as its HTTP proxy.

    The client is pointed at it the client's own way: KAGGLE_API_ENVIRONMENT=LOCALHOST makes it call
    http://localhost/api/v1/<service>/<method>, and HTTP_PROXY routes that to 127.0.0.1:<port>. Every
    request is recorded (method, path, JSON body, headers); `files` are served for downloads.
    """

    def __init__(self):
        import http.server
        import threading

        self.requests: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.uploads: dict[str, bytes] = {}
        self.replies: dict[str, object] = {}  # method name -> JSON reply or (status, JSON)
        double = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _record(self):
                from urllib.parse import urlsplit

                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                path = urlsplit(self.path).path
                double.requests.append(
                    {"method": self.command, "path": path, "body": body, "headers": dict(self.headers)}
                )
                return path, body

            def _send(self, status, payload=b"", ctype="application/json", headers=()):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                path, _ = self._record()
                name = path.rsplit("/", 1)[-1]
                if name == "DownloadDataFiles":
                    comp = json.loads(double.requests[-1]["body"])["competitionName"]
                    return self._send(302, b"", "text/plain", [("Location", f"http://localhost/files/{comp}.zip")])
                reply = double.replies.get(name, {})
                status, reply = reply if isinstance(reply, tuple) else (200, reply)
                self._send(status, reply)

            def do_GET(self):
                path, _ = self._record()
                name = path.rsplit("/", 1)[-1]
                if name in double.files:
                    return self._send(200, double.files[name], "application/octet-stream")
                self._send(404, {"code": 404, "message": f"no file {name}"})

            def do_PUT(self):
                path, body = self._record()
                double.uploads[path.rsplit("/", 1)[-1]] = body
                self._send(200, {})

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def env(self, tmp_path, **extra) -> dict:
        """Environment for a `kaggle-kit` subprocess that talks to this double with fake credentials."""
        proxy = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("KAGGLE_", "HTTP", "NO_PROXY"))}
        env.update(
            KAGGLE_API_ENVIRONMENT="LOCALHOST",
            HTTP_PROXY=proxy,
            http_proxy=proxy,
            NO_PROXY="",
            no_proxy="",
            KAGGLE_USERNAME="kit-tester",
            KAGGLE_KEY=FAKE_KAGGLE_KEY,
            KAGGLE_CONFIG_DIR=str(tmp_path / "kaggle-config"),
            **extra,
        )
        return env

    def calls(self, name: str) -> list[dict]:
        """The recorded requests whose path ends with /<name>, JSON bodies decoded."""
        return [
            {**r, "json": json.loads(r["body"]) if r["body"] else {}}
            for r in self.requests
            if r["path"].endswith("/" + name)
        ]

    def close(self):
        self._server.shutdown()


FAKE_KAGGLE_KEY = "f4k3k3y0123456789abcdef0123456789"


@pytest.fixture
def kaggle_double():
    double = KaggleDouble()
    yield double
    double.close()


def run_kit(*args, env=None, timeout: int = 600):
    """`python -m kaggle_kit ARGS` in a subprocess: the CompletedProcess, text output captured."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "kaggle_kit", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
