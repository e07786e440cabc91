"""Routing rules, the embedding router and the request batcher, without a model."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from kaggle_kit.config import ServeConfig, parse_adapters
from kaggle_kit.errors import ConfigError
from kaggle_kit.serve.app import Batcher, QueueFull
from kaggle_kit.serve.routing import BASE, build_router, load_routes

GSM = "Q: 12 + 30 = <<12+30=42>>42. The answer is 42.\nQ: 7 * 8 = ?"


def test_rules_first_hit_wins_in_order():
    router = build_router(
        {
            "rules": [
                {"name": "gsm", "adapter": "math", "regex": r"\d+ [+*] \d+", "all": ["The answer is"]},
                {"name": "mcq", "adapter": "base", "all": ["Question:", "Answer:"], "none": ["Passage:"]},
                {"name": "any-qa", "adapter": "qa", "any": ["Question:", "Q:"]},
            ],
            "default": "chat",
        }
    )
    assert router.route(GSM).adapter == "math" and router.route(GSM).reason == "rule:gsm"
    assert router.route("Question: why?\nAnswer:").adapter == "base"
    # 'none' blocks the mcq rule, so the next rule decides
    assert router.route("Passage: x\nQuestion: why?\nAnswer:").reason == "rule:any-qa"
    assert router.route("Write a poem").adapter == "chat" and router.route("Write a poem").reason == "default"
    assert router.adapters() == {"math", "base", "qa", "chat"}


def test_no_routes_sends_everything_to_base():
    assert build_router(None).route("anything").adapter == BASE


@pytest.mark.parametrize(
    "spec, words",
    [
        ({"rules": [{"adapter": "a"}]}, "no condition"),
        ({"rules": [{"adapter": "a", "regex": "("}]}, "bad regex"),
        ({"rules": [{"regex": "x"}]}, "'adapter' key"),
        ({"rules": [{"adapter": "a", "all": "word"}]}, "list of strings"),
        ({"rules": [{"adapter": "a", "any": ["x"], "colour": 1}]}, "unknown keys"),
        ({"rulez": []}, "unknown keys"),
        ({"embedding": {"examples": {"a": []}}}, "examples"),
    ],
)
def test_bad_routes_name_the_problem(spec, words):
    with pytest.raises(ConfigError, match=words):
        build_router(spec, embedder_loader=lambda _spec: None)


def test_embedding_router_picks_the_nearest_centroid():
    # a toy embedder over two directions: texts with 'sum' point one way, others the other way
    def embed(texts):
        return np.array([[1.0, 0.0] if "sum" in t else [0.0, 1.0] for t in texts], dtype=np.float32)

    spec = {"embedding": {"examples": {"math": ["sum of 2", "sum of 3"], "poet": ["a poem"]}, "min_similarity": 0.5}}
    router = build_router(spec, embedder_loader=lambda _spec: embed)
    assert router.route("the sum of 4 and 5").adapter == "math"
    assert router.route("an ode").adapter == "poet"
    assert router.route("an ode").reason.startswith("embedding:")


def test_routes_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_routes(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_routes(bad)


def test_shipped_routes_file_parses():
    """configs/routes_neurips.yaml is the seed-000 style example the README shows."""
    from pathlib import Path

    spec = load_routes(Path(__file__).resolve().parents[2] / "configs" / "routes_neurips.yaml")
    router = build_router({k: v for k, v in spec.items() if k != "embedding"})  # embedder tested elsewhere
    assert router.route(GSM).reason == "rule:gsm"
    mmlu = "The following are multiple choice questions (with answers) about anatomy.\nQuestion: ..."
    assert router.route(mmlu).adapter == "base"
    assert router.route("(CNN) ... Summarize the above article in 3 sentences.").reason == "rule:cnn"
    assert router.route("Hi there").reason == "default"
    assert set(spec["embedding"]["examples"]) <= router.adapters() | {"math", "chat"}


def test_adapter_flags_and_serve_limits():
    assert parse_adapters(["math=runs/a", "runs/b"]) == {"math": "runs/a", "b": "runs/b"}
    with pytest.raises(ConfigError, match="twice"):
        parse_adapters(["a=x", "a=y"])
    with pytest.raises(ConfigError, match="'base'"):
        ServeConfig(adapters={"base": "x"})
    with pytest.raises(ConfigError, match="max_batch"):
        ServeConfig(max_batch=0)


def test_batcher_groups_by_key_keeps_order_and_bounds_the_queue():
    release = threading.Event()
    seen = []

    def run(key, payloads):
        release.wait(5)
        seen.append((key, list(payloads)))
        return [f"{key}:{p}" for p in payloads]

    b = Batcher(run, max_batch=3, max_queue=6, wait_s=0.05)
    futs = [b.submit(k, i) for i, k in enumerate(["a", "b", "a", "a", "b", "a"])]
    with pytest.raises(QueueFull):
        b.submit("a", 99)
    release.set()
    assert [f.result(5) for f in futs] == ["a:0", "b:1", "a:2", "a:3", "b:4", "a:5"]
    # the first batch may be job 0 alone (the worker woke before the rest arrived); after it, same-key jobs
    # run together, at most max_batch at a time, in arrival order
    assert all(len(p) <= 3 for _, p in seen)
    assert sorted(i for _, p in seen for i in p) == list(range(6))
    assert len(seen) < 6
    assert b.waiting == 0


def test_batcher_failure_reaches_every_request_and_the_worker_survives():
    def run(key, payloads):
        if key == "boom":
            raise ValueError("bad batch")
        return payloads

    b = Batcher(run, wait_s=0.0)
    with pytest.raises(ValueError, match="bad batch"):
        b.submit("boom", 1).result(5)
    assert b.submit("ok", 2).result(5) == 2
