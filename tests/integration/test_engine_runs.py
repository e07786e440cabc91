"""The engine's promises on the real model: OOM back-off, workers, shards (kill -9: tests/reliability)."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from kaggle_kit import jobs
from kaggle_kit.config import MergeConfig, PredictConfig, RehearseConfig, ValidateConfig
from kaggle_kit.errors import InputError
from kaggle_kit.jobs import work

from ..conftest import write_subset


def cli(*args):
    return [sys.executable, "-m", "kaggle_kit", "predict", *args, "--no-progress"]


def test_injected_oom_gives_the_same_submission(tmp_path, monkeypatch):
    """Also pins a bug: split batches were padded to their own longest row, which moved near-tie rows'
    numbers in bf16 and flipped letters; halves are now padded as the whole batch was. In fp32: on a CPU
    with AMX (Sapphire Rapids) oneDNN's bf16 kernels also block by the batch's row count, so a half batch
    rounds differently from the whole one however it is padded."""
    data = write_subset("science_exam", tmp_path, 16)
    cfg = dict(max_length=512, batch_tokens=4096, progress=False, dtype="float32")
    ref = jobs.predict(PredictConfig("science_exam", str(data), out=str(tmp_path / "ref.csv"), **cfg))
    real_task = work._task

    def task_that_ooms(*args, **kw):
        task = real_task(*args, **kw)
        step = task.step

        def oom_step(batch, **kw):
            if len(batch) > 3:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB (injected)")
            return step(batch, **kw)

        task.step = oom_step
        return task

    monkeypatch.setattr(work, "_task", task_that_ooms)
    res = jobs.predict(PredictConfig("science_exam", str(data), out=str(tmp_path / "oom.csv"), **cfg))
    assert res.stats["oom_splits"] > 0 and res.fallback == 0 and ref.fallback == 0
    assert (tmp_path / "oom.csv").read_bytes() == (tmp_path / "ref.csv").read_bytes()


def test_two_workers_equal_one_worker(tmp_path):
    """Equal to float rounding: a worker has half the threads, and on some CPUs (Intel with AMX) oneDNN
    splits a matmul's sums by thread count, so the last bits differ between 1 and 2 workers there."""
    data = write_subset("lmsys", tmp_path, 10, split="train")
    cfg = dict(max_length=256, batch_tokens=512, progress=False, dtype="float32")
    one = jobs.predict(PredictConfig("lmsys", str(data), out=str(tmp_path / "one.csv"), **cfg))
    two = jobs.predict(PredictConfig("lmsys", str(data), out=str(tmp_path / "two.csv"), workers=2, **cfg))
    assert one.predicted == two.predicted == 10
    a, b = (pd.read_csv(tmp_path / f"{n}.csv") for n in ("one", "two"))
    assert a["id"].tolist() == b["id"].tolist()
    np.testing.assert_allclose(a.iloc[:, 1:].to_numpy(), b.iloc[:, 1:].to_numpy(), atol=1e-5)
    assert not list(tmp_path.glob("two.csv.ckpt*"))


def test_shards_then_merge_equal_a_single_run(tmp_path):
    data = write_subset("prompt_recovery", tmp_path, 6)
    cfg = dict(max_length=512, batch_tokens=1024, progress=False)  # several batches to shard
    jobs.predict(PredictConfig("prompt_recovery", str(data), out=str(tmp_path / "single.csv"), **cfg))
    parts = []
    for i in range(2):
        part = tmp_path / f"part{i}.jsonl"
        res = jobs.predict(PredictConfig("prompt_recovery", str(data), out=str(part), shard=f"{i}/2", **cfg))
        assert res.fallback == 0 and 0 < res.rows < 6
        parts.append(str(part))
    merged = jobs.merge(MergeConfig("prompt_recovery", str(data), parts, out=str(tmp_path / "merged.csv")))
    assert merged.predicted == 6
    assert (tmp_path / "merged.csv").read_bytes() == (tmp_path / "single.csv").read_bytes()
    # a missing shard leaves its rows to the fallback, still a complete submission
    jobs.merge(MergeConfig("prompt_recovery", str(data), parts[:1], out=str(tmp_path / "half.csv")))
    assert jobs.validate(ValidateConfig("prompt_recovery", str(tmp_path / "half.csv"), str(data))) == []
    # the mean prompt, which a shard file does not hold, is applied by merge as a single run applies it
    mean = tmp_path / "mean.txt"
    mean.write_text("Rewrite the text in a more formal tone.", encoding="utf-8")
    with_mean = dict(mean_prompt=str(mean), append_mean_prompt=True)
    jobs.predict(PredictConfig("prompt_recovery", str(data), out=str(tmp_path / "single_mean.csv"), **cfg, **with_mean))
    jobs.merge(MergeConfig("prompt_recovery", str(data), parts, out=str(tmp_path / "merged_mean.csv"), **with_mean))
    assert (tmp_path / "merged_mean.csv").read_bytes() == (tmp_path / "single_mean.csv").read_bytes()
    assert (tmp_path / "merged_mean.csv").read_bytes() != (tmp_path / "merged.csv").read_bytes()
    jobs.merge(MergeConfig("prompt_recovery", str(data), parts[:1], out=str(tmp_path / "half_mean.csv"), **with_mean))
    half = pd.read_csv(tmp_path / "half_mean.csv")
    assert half.iloc[:, 1].str.contains("more formal tone").all()  # the fallback rows are the mean prompt too
    with pytest.raises(InputError, match="missing or empty"):
        jobs.merge(MergeConfig("prompt_recovery", str(data), parts, mean_prompt=str(tmp_path / "none.txt")))


def test_rehearse_predicts_a_runtime():
    from ..conftest import DATA

    rep = jobs.rehearse(
        RehearseConfig("science_exam", str(DATA / "science_exam" / "test.csv"), rows=4000, budget="60s", max_length=512)
    )
    assert rep["predicted_s"] > 60 and rep["fits"] is False
    assert 256 <= rep["max_length_to_fit"] <= 512
    assert all(v > 0 for v in rep["throughput"].values())


@pytest.mark.parametrize("bad", ["2", "2/2", "a/b"])
def test_bad_shard_names_the_field(bad):
    from kaggle_kit.errors import ConfigError

    with pytest.raises(ConfigError, match="shard"):
        PredictConfig("lmsys", "x.csv", shard=bad)


def test_rehearse_cli_prints_prediction():
    from ..conftest import DATA

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kaggle_kit",
            "rehearse",
            "lmsys",
            "--data",
            str(DATA / "lmsys" / "train.csv"),
            "--rows",
            "25000",
            "--max-length",
            "256",
            "--budget",
            "9h",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "predicted inference time for 25000 rows" in r.stdout and "budget 9.00 h:" in r.stdout
