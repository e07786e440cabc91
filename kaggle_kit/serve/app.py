"""The HTTP API of the NeurIPS 2023 LLM Efficiency Challenge, serving LoRA adapters by route.

Endpoints (FastAPI): POST /process, /tokenize, /decode with the reference fields (../shared/NEURIPS_API.md),
plus GET /health. One worker thread owns the model; requests queue in arrival order and those for the
same adapter run as one batch.
"""

import concurrent.futures
import logging
import queue
import threading
import time
from collections import deque

from ..errors import ConfigError
from .generation import GenRequest, generate_batch
from .routing import BASE, Router, build_router, load_routes

log = logging.getLogger("kaggle_kit.serve")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class QueueFull(Exception):
    """More requests are waiting than the server's max_queue."""


class Batcher:
    """Queue of (key, payload) jobs; a worker thread runs up to max_batch jobs with the same key at a time."""

    def __init__(self, run_batch, max_batch: int = 8, max_queue: int = 256, wait_s: float = 0.005):
        self._run = run_batch
        self.max_batch, self.max_queue, self.wait_s = max_batch, max_queue, wait_s
        self._q: queue.Queue = queue.Queue()
        self._pending: deque = deque()
        self._waiting = 0
        self.batches = 0  # batches run so far (jobs / batches = how much batching happened)
        self.jobs = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._loop, name="kit-serve-worker", daemon=True).start()

    @property
    def waiting(self) -> int:
        """Jobs submitted and not yet finished."""
        return self._waiting

    def submit(self, key, payload) -> concurrent.futures.Future:
        """Queue a job; its future gets run_batch's result for it. Raises QueueFull past max_queue."""
        with self._lock:
            if self._waiting >= self.max_queue:
                raise QueueFull
            self._waiting += 1
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._q.put((key, payload, fut))
        return fut

    def _collect(self):
        if not self._pending:
            self._pending.append(self._q.get())
        end = time.monotonic() + self.wait_s
        while len(self._pending) < 4 * self.max_batch:
            try:
                self._pending.append(self._q.get(timeout=max(0.0, end - time.monotonic())))
            except queue.Empty:
                break
        key = self._pending[0][0]
        batch, rest = [], deque()
        for job in self._pending:
            (batch if job[0] == key and len(batch) < self.max_batch else rest).append(job)
        self._pending = rest
        return key, batch

    def _loop(self):
        while True:
            key, batch = self._collect()
            self.batches += 1
            self.jobs += len(batch)
            try:
                outs = self._run(key, [payload for _, payload, _ in batch])
                for (_, _, fut), out in zip(batch, outs):
                    fut.set_result(out)
            except Exception as exc:  # noqa: BLE001 - handed to each waiting request, the server keeps going
                log.exception("batch for %s failed", key)
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
            finally:
                with self._lock:
                    self._waiting -= len(batch)


def _model_runner(model, tokenizer):
    """run_batch(adapter, [GenRequest lists]) for the Batcher: switch the adapter, decode them together."""
    is_peft = hasattr(model, "peft_config")

    def run(adapter: str, jobs: list[list[GenRequest]]):
        flat = [g for job in jobs for g in job]
        if is_peft and adapter == BASE:
            with model.disable_adapter():
                results = generate_batch(model, tokenizer, flat)
        else:
            if is_peft:
                model.set_adapter(adapter)
            results = generate_batch(model, tokenizer, flat)
        out, at = [], 0
        for job in jobs:
            out.append(results[at : at + len(job)])
            at += len(job)
        return out

    return run


def _sample_dict(tokenizer, prompt: str, echo: bool, res) -> dict:
    ids = (res.prompt_ids if echo else []) + res.new_ids
    tokens = [
        {"text": tokenizer.decode([i]), "logprob": lp, "top_logprob": {tokenizer.decode([t]): tlp}}
        for i, lp, (t, tlp) in zip(ids, res.logprobs, res.top)
    ]
    text = (prompt if echo else "") + tokenizer.decode(res.new_ids, skip_special_tokens=True)
    return {"text": text, "tokens": tokens, "logprob": float(sum(res.logprobs))}


def build_app(model, tokenizer, cfg, router: Router | None = None):
    """The FastAPI app serving `model` (a PeftModel with named adapters, or a plain model) under cfg's limits."""
    from fastapi import FastAPI

    router = router or Router()
    loaded = set(getattr(model, "peft_config", {})) | {BASE}
    missing = router.adapters() - loaded
    if missing:
        raise ConfigError("routes", f"route to unknown adapter(s) {sorted(missing)}; loaded: {sorted(loaded)}")
    batcher = Batcher(_model_runner(model, tokenizer), cfg.max_batch, cfg.max_queue, cfg.batch_wait_ms / 1000)
    app = FastAPI(title="kaggle_kit serve", description="NeurIPS LLM Efficiency Challenge API with LoRA routing")
    app.state.batcher, app.state.router = batcher, router
    _add_process(app, tokenizer, cfg, router, batcher)
    _add_tools(app, tokenizer, loaded, batcher)
    return app


def _limit(name: str, got: int, cap: int, what: str):
    from fastapi import HTTPException

    if got > cap:
        raise HTTPException(400, f"{what} is {got}; the server's limit is {name}={cap}")


def _add_process(app, tokenizer, cfg, router, batcher) -> None:
    """POST /process: generation with log-probs, routed to an adapter, batched with others for it."""
    import asyncio

    from fastapi import HTTPException

    from .schemas import ProcessRequest, ProcessResponse

    @app.post("/process", response_model=ProcessResponse)
    async def process(req: ProcessRequest):
        start = time.perf_counter()
        ids = tokenizer(req.prompt, add_special_tokens=True).input_ids
        if not ids:
            raise HTTPException(400, "prompt is empty (0 tokens)")
        _limit("max_prompt_tokens", len(ids), cfg.max_prompt_tokens, "prompt length in tokens")
        # the API's default (50) is capped quietly; an explicit larger request is refused
        new = req.max_new_tokens if "max_new_tokens" in req.model_fields_set else min(50, cfg.max_new_tokens)
        _limit("max_new_tokens", new, cfg.max_new_tokens, "max_new_tokens")
        _limit("max_num_samples", req.num_samples, cfg.max_num_samples, "num_samples")
        echo = req.echo_prompt is not False
        route = router.route(req.prompt)
        seeds = [None if req.seed is None else req.seed + k for k in range(req.num_samples)]
        job = [GenRequest(ids, new, req.temperature, req.top_k or None, seed, echo) for seed in seeds]
        try:
            fut = batcher.submit(route.adapter, job)
        except QueueFull:
            raise HTTPException(
                503, f"{batcher.waiting} requests waiting; the server's limit is max_queue={cfg.max_queue}; retry later"
            ) from None
        results = await asyncio.wrap_future(fut)
        samples = [_sample_dict(tokenizer, req.prompt, echo, r) for r in results]
        elapsed = time.perf_counter() - start
        log.info(
            "process adapter=%s %s prompt_tokens=%d new_tokens=%d %.3fs",
            route.adapter,
            route.reason,
            len(ids),
            len(results[0].new_ids),
            elapsed,
        )
        extra = {"request_time": elapsed, "adapter": route.adapter, "route": route.reason, "samples": samples[1:]}
        return {**samples[0], **extra}


def _add_tools(app, tokenizer, loaded: set, batcher) -> None:
    """POST /tokenize, /decode and GET /health."""
    from fastapi import HTTPException

    from .schemas import DecodeRequest, DecodeResponse, TokenizeRequest, TokenizeResponse

    vocab = len(tokenizer)

    @app.post("/tokenize", response_model=TokenizeResponse)
    def tokenize(req: TokenizeRequest):
        start = time.perf_counter()
        ids = tokenizer(req.text, add_special_tokens=True).input_ids
        if req.truncation:
            ids = ids[: req.max_length]
        return {"tokens": ids, "request_time": time.perf_counter() - start}

    @app.post("/decode", response_model=DecodeResponse)
    def decode(req: DecodeRequest):
        start = time.perf_counter()
        bad = [t for t in req.tokens if not 0 <= t < vocab]
        if bad:
            raise HTTPException(400, f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        return {"text": tokenizer.decode(req.tokens), "request_time": time.perf_counter() - start}

    @app.get("/health")
    def health():
        return {
            "status": "ok",
            "adapters": sorted(loaded),
            "waiting": batcher.waiting,
            "batches": batcher.batches,
            "requests": batcher.jobs,
        }


def load_app(cfg):
    """Load cfg's model and adapters, build the router from cfg.routes, and return the app."""
    from ..models import load_model

    spec = load_routes(cfg.routes)
    model, tok = load_model(cfg.model, adapter=dict(cfg.adapters) or None)
    return build_app(model, tok, cfg, build_router(spec))


def serve(cfg) -> None:
    """Run the API with uvicorn until interrupted (the CLI's `serve`)."""
    import uvicorn

    if cfg.host not in LOOPBACK:
        log.warning("serving on %s: reachable from other machines; the API has no authentication", cfg.host)
    app = load_app(cfg)
    log.info(
        "serving on http://%s:%d (adapters: %s)", cfg.host, cfg.port, ", ".join(sorted(app.state.router.adapters()))
    )
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")


class ServerThread:
    """Run an app with uvicorn in a background thread (tests, notebooks); stop() shuts it down."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 8080):
        import uvicorn

        self.url = f"http://{host}:{port}"
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        end = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > end:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for the thread."""
        self._server.should_exit = True
        self._thread.join(timeout=10)
