"""The serving API on 127.0.0.1 with the real SmolLM2 and two LoRA adapters trained here (tiny, fp32 LoRA)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from kaggle_kit.config import ServeConfig
from kaggle_kit.hardware import detect
from kaggle_kit.models import demo_model_dir, load_model, load_tokenizer
from kaggle_kit.serve import ServerThread, build_app, build_router

PIRATE = " Arr, matey!"
MATH = " Forty-two."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_adapter(out, prompts: list[str], answer: str, steps: int = 30):
    """A LoRA adapter that answers every prompt with `answer` (so routing is visible in the output)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    tok = load_tokenizer(demo_model_dir())
    base = AutoModelForCausalLM.from_pretrained(demo_model_dir(), dtype=torch.float32)
    model = get_peft_model(
        base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    rows = []
    for p in prompts:
        ids = tok(p).input_ids
        full = ids + tok(answer).input_ids + [tok.eos_token_id]
        rows.append((torch.tensor([full]), torch.tensor([[-100] * len(ids) + full[len(ids) :]])))
    for step in range(steps):
        x, y = rows[step % len(rows)]
        loss = model(input_ids=x, labels=y).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    sea = ["Tell me about the sea.", "What is a ship?", "Describe the ocean waves.", "Who sails the sea?"]
    sums = ["What is 3 + 4?", "Compute 12 times 7.", "What is 9 minus 5?", "Add 10 and 20."]
    return {
        "pirate": str(_train_adapter(root / "pirate", sea, PIRATE)),
        "math": str(_train_adapter(root / "math", sums, MATH)),
    }


ROUTES = {
    "rules": [{"name": "sea", "adapter": "pirate", "any": ["sea", "ship", "ocean"]}],
    "embedding": {
        "embedder": "minilm",
        "min_similarity": 0.3,
        "examples": {"math": ["What is 3 + 4?", "Compute 12 times 7.", "Add 10 and 20."]},
    },
    "default": "base",
}


@pytest.fixture(scope="module")
def server(adapters):
    cfg = ServeConfig(adapters=adapters, max_prompt_tokens=64, max_new_tokens=40, max_num_samples=3)
    # fp32: the tests compare the server's incremental decoding with full forwards to 2e-4, which bf16
    # rounding (a CPU with native bf16 picks it) would blur
    model, tok = load_model("demo", detect("float32"), adapter=adapters)
    srv = ServerThread(build_app(model, tok, cfg, build_router(ROUTES)), port=_free_port())
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reference(adapters):
    """A second copy of the model with the same adapters, for computing expected outputs."""
    model, tok = load_model("demo", detect("float32"), adapter=adapters)
    return model, tok


def _post(url: str, body, raw: bool = False):
    data = body if raw else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _reference_greedy(reference, adapter: str, prompt: str, n: int) -> str:
    model, tok = reference
    ids = tok(prompt, return_tensors="pt")
    with torch.inference_mode():
        if adapter == "base":
            with model.disable_adapter():
                out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
        else:
            model.set_adapter(adapter)
            out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.input_ids.shape[1] :], skip_special_tokens=True)


def test_process_schema_and_tokenize_decode(server, reference):
    _, tok = reference
    status, r = _post(server.url + "/process", {"prompt": "The capital of France is", "max_new_tokens": 8})
    assert status == 200
    assert set(r) >= {"text", "tokens", "logprob", "request_time", "adapter", "route"}
    assert r["text"].startswith("The capital of France is")  # echo_prompt omitted = echoed (reference server)
    assert r["logprob"] == pytest.approx(sum(t["logprob"] for t in r["tokens"]), abs=1e-4)
    assert all(set(t) == {"text", "logprob", "top_logprob"} and len(t["top_logprob"]) == 1 for t in r["tokens"])
    assert r["request_time"] > 0
    status, t = _post(server.url + "/tokenize", {"text": "The capital of France is"})
    assert status == 200 and t["tokens"] == tok("The capital of France is").input_ids
    status, d = _post(server.url + "/decode", {"tokens": t["tokens"]})
    assert status == 200 and d["text"] == "The capital of France is"
    _, cut = _post(server.url + "/tokenize", {"text": "one two three four five", "max_length": 2})
    assert len(cut["tokens"]) == 2


@pytest.mark.parametrize(
    "prompt, adapter, reason",
    [
        ("Tell me about the sea.", "pirate", "rule:sea"),
        ("What is 5 + 9?", "math", "embedding"),
        ("Write a haiku about autumn leaves.", "base", "default"),
    ],
)
def test_routing_picks_the_adapter_and_greedy_equals_generate(server, reference, prompt, adapter, reason):
    body = {"prompt": prompt, "max_new_tokens": 12, "temperature": 0, "echo_prompt": False}
    status, r = _post(server.url + "/process", body)
    assert status == 200
    assert r["adapter"] == adapter and r["route"].startswith(reason)
    assert r["text"] == _reference_greedy(reference, adapter, prompt, 12)
    # the trained adapters visibly answer in their own way; the base model does not
    expected = {"pirate": PIRATE, "math": MATH}.get(adapter)
    if expected:
        assert r["text"].startswith(expected)
    else:
        assert PIRATE.strip() not in r["text"] and MATH.strip() not in r["text"]


def test_logprobs_match_the_models_log_softmax(server, reference):
    model, tok = reference
    prompt = "Describe the ocean waves."
    status, r = _post(server.url + "/process", {"prompt": prompt, "max_new_tokens": 6, "temperature": 0})
    assert status == 200 and r["adapter"] == "pirate"
    ids = tok(prompt).input_ids
    all_ids = tok(r["text"]).input_ids  # echoed: prompt + continuation
    tokens = r["tokens"]
    assert [t["text"] for t in tokens[: len(ids)]] == [tok.decode([i]) for i in ids]
    full = ids + [tok.convert_tokens_to_ids(tok.tokenize(t["text"]))[0] for t in tokens[len(ids) :]]
    assert full[: len(all_ids)] == all_ids[: len(full)]
    model.set_adapter("pirate")
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0].float(), dim=-1)
    for i in range(1, len(full)):
        assert tokens[i]["logprob"] == pytest.approx(float(logp[i - 1, full[i]]), abs=2e-4), i
        ((top_text, top_lp),) = tokens[i]["top_logprob"].items()
        assert top_lp == pytest.approx(float(logp[i - 1].max()), abs=2e-4)
        assert top_text == tok.decode([int(logp[i - 1].argmax())])
    # greedy: each generated token is the top token of its position
    assert all(t["text"] in t["top_logprob"] for t in tokens[len(ids) :])


def test_seeded_sampling_is_reproducible_and_samples_differ(server):
    body = {
        "prompt": "Once upon a time",
        "max_new_tokens": 15,
        "temperature": 1.5,
        "top_k": 0,
        "seed": 7,
        "echo_prompt": False,
        "num_samples": 3,
    }
    _, a = _post(server.url + "/process", body)
    _, b = _post(server.url + "/process", body)
    assert a["text"] == b["text"] and [s["text"] for s in a["samples"]] == [s["text"] for s in b["samples"]]
    assert len(a["samples"]) == 2
    assert len({a["text"], *[s["text"] for s in a["samples"]]}) >= 2  # seeds 7, 8, 9 at temperature 1.5


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"prompt": "word " * 100}, 400, "max_prompt_tokens=64"),
        ({"prompt": "hi", "max_new_tokens": 41}, 400, "max_new_tokens=40"),
        ({"prompt": "hi", "num_samples": 4}, 400, "max_num_samples=3"),
        ({"prompt": ""}, 400, "empty"),
        ({"prompt": "hi", "temperature": -1}, 422, "temperature"),
        ({"max_new_tokens": 3}, 422, "prompt"),
    ],
)
def test_limits_and_bad_requests_get_4xx_naming_the_problem(server, body, status, words):
    got, r = _post(server.url + "/process", body)
    assert got == status
    assert words in json.dumps(r["detail"])


def test_malformed_json_and_bad_token_ids_never_crash(server):
    got, r = _post(server.url + "/process", b"{not json", raw=True)
    assert got == 422
    got, r = _post(server.url + "/decode", {"tokens": [1, -5, 10**9]})
    assert got == 400 and "outside the vocabulary" in r["detail"]
    with urllib.request.urlopen(server.url + "/health", timeout=10) as h:
        assert json.loads(h.read())["status"] == "ok"


def test_concurrent_requests_are_queued_and_batched(server):
    with urllib.request.urlopen(server.url + "/health", timeout=10) as h:
        before = json.loads(h.read())
    prompts = [f"Tell me about the sea, part {i}." for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        got = list(
            pool.map(
                lambda p: _post(
                    server.url + "/process", {"prompt": p, "max_new_tokens": 10, "temperature": 0, "echo_prompt": False}
                ),
                prompts,
            )
        )
    assert all(s == 200 and r["adapter"] == "pirate" for s, r in got)
    with urllib.request.urlopen(server.url + "/health", timeout=10) as h:
        after = json.loads(h.read())
    assert after["requests"] - before["requests"] == 12
    assert after["batches"] - before["batches"] < 12  # some requests shared a batch


def test_route_to_an_unloaded_adapter_is_refused(reference):
    model, tok = reference
    from kaggle_kit.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown adapter"):
        build_app(model, tok, ServeConfig(), build_router({"default": "nope"}))


def test_cli_serve_answers_on_loopback(tmp_path, adapters):
    port = _free_port()
    routes = tmp_path / "routes.yaml"
    routes.write_text("rules:\n  - {name: sea, adapter: pirate, any: [sea]}\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kaggle_kit",
            "serve",
            "--port",
            str(port),
            "--adapter",
            f"pirate={adapters['pirate']}",
            "--routes",
            str(routes),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(proc.stdout.read())
                time.sleep(0.25)
        status, r = _post(
            url + "/process",
            {"prompt": "Who sails the sea?", "max_new_tokens": 6, "temperature": 0, "echo_prompt": False},
        )
        assert status == 200 and r["adapter"] == "pirate" and r["text"].startswith(PIRATE)
    finally:
        proc.terminate()
        proc.wait(20)
