"""kill -9 at random points (seeded) of `predict` and `train`, then rerun: the same result, no broken files.

Each seed kills the run twice at random moments (anywhere: imports, model load, mid-batch, mid-write)
before letting a third run finish; the result is compared with an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kaggle_kit import jobs
from kaggle_kit.config import ValidateConfig

from ..conftest import DATA, alpaca_valid, write_subset

PREDICT_SEEDS = [11, 12]  # each kills at two random points; more seeds cost ~30 s each
TRAIN_SEEDS = [21]  # ~60 s each on a 2-core CPU in fp32
PREDICT = ["lmsys", "--max-length", "192", "--batch-tokens", "512", "--no-progress"]
TRAIN = [
    "train",
    "alpaca",
    *("--set", f"train={DATA / 'alpaca' / 'train.json'}"),
    *("--set", "lora_r=4", "--set", "max_length=160", "--set", "batch_size=2", "--set", "grad_accum=1"),
    *("--set", "max_steps=4", "--set", "eval_every=2", "--set", "lora_dropout=0.1", "--set", "eval_metric=false"),
    *("--set", "progress=false", "--set", "scheduler=cosine", "--set", "warmup_ratio=0.2"),
]


def _timed(cmd) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def _kill_after(cmd, seconds: float) -> bool:
    """Start cmd, SIGKILL it after `seconds`; True if it was still running (a real interruption)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


@pytest.fixture(scope="module")
def predict_ref(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict_ref")
    data = write_subset("lmsys", tmp, 16, split="train")
    ref = tmp / "ref.csv"
    wall = _timed([sys.executable, "-m", "kaggle_kit", "predict", *PREDICT, "--data", str(data), "--out", str(ref)])
    return data, ref.read_bytes(), wall


@pytest.mark.parametrize("seed", PREDICT_SEEDS)
def test_predict_killed_twice_at_random_then_finished_is_identical(tmp_path, predict_ref, seed):
    data, ref, wall = predict_ref
    out = tmp_path / "submission.csv"
    cmd = [sys.executable, "-m", "kaggle_kit", "predict", *PREDICT, "--data", str(data), "--out", str(out)]
    rng = random.Random(seed)
    for _ in range(2):
        _kill_after(cmd, rng.uniform(0.2, wall))
        # after any kill: the submission is absent (killed before the fallback) or complete and valid
        if out.exists():
            assert jobs.validate(ValidateConfig("lmsys", str(out), str(data))) == []
        ckpt = tmp_path / "submission.csv.ckpt.jsonl"
        if ckpt.exists():
            json.loads(ckpt.read_text().split("\n", 1)[0])  # the header is always whole
    subprocess.run(cmd, check=True, capture_output=True)
    assert out.read_bytes() == ref
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != data.name) == ["submission.csv"]


@pytest.fixture(scope="module")
def train_cmd(tmp_path_factory):
    """TRAIN with a valid file of 4 rows: three evaluations (steps 0, 2, 4) of the 20 would be most of
    the run, and what is checked is the resume, not the evaluation."""
    valid = alpaca_valid(tmp_path_factory.mktemp("train_valid"), 4)
    return [sys.executable, "-m", "kaggle_kit", *TRAIN, "--set", f"valid={valid}"]


@pytest.fixture(scope="module")
def train_ref(tmp_path_factory, train_cmd):
    out = tmp_path_factory.mktemp("train_ref") / "run"
    wall = _timed([*train_cmd, "--set", f"out={out}"])
    return out, wall


def _assert_whole_checkpoints(out: Path):
    from safetensors.torch import load_file

    for name in ("last", "best"):
        folder = out / name
        if folder.exists():
            load_file(folder / "adapter_model.safetensors")
            json.loads((folder / "kit_config.json").read_text())
            if (folder / "trainer_state.pt").exists():
                torch.load(folder / "trainer_state.pt", weights_only=False)


@pytest.mark.parametrize("seed", TRAIN_SEEDS)
def test_train_killed_twice_at_random_then_finished_equals_uninterrupted(tmp_path, train_cmd, train_ref, seed):
    from safetensors.torch import load_file

    ref_out, wall = train_ref
    out = tmp_path / "run"
    cmd = [*train_cmd, "--set", f"out={out}"]
    rng = random.Random(seed)
    for _ in range(2):
        _kill_after(cmd, rng.uniform(0.5, wall))
        from kaggle_kit.train.checkpoint import recover

        recover(out / "last")  # what the next run does first; a kill between two renames is not a loss
        _assert_whole_checkpoints(out)
    subprocess.run(cmd, check=True, capture_output=True)
    for name in ("last", "best"):
        ref = load_file(ref_out / name / "adapter_model.safetensors")
        got = load_file(out / name / "adapter_model.safetensors")
        assert ref.keys() == got.keys()
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-6)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp folders left behind
