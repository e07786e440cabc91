"""A full disk: a clear error, and the previous good files intact. A real tmpfs where this machine lets
us mount one (root), and an injected ENOSPC everywhere."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from kaggle_kit import io as kio
from kaggle_kit import jobs
from kaggle_kit.config import PredictConfig
from kaggle_kit.errors import KitError
from kaggle_kit.infer.checkpoint import Checkpoint, read_results
from kaggle_kit.io import write_csv_atomic
from kaggle_kit.jobs import prediction as predict_module

from ..conftest import run_kit, write_subset


@pytest.fixture
def tiny_disk(tmp_path):
    """A 512 KiB tmpfs folder (skipped where mounting is not allowed; the injected tests still run)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.decode().strip()[:80]}); injected ENOSPC covers it")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path, leave: int = 8 * 1024) -> None:
    """Fill the filesystem until fewer than `leave` bytes are free."""
    import os

    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / "filler.bin", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))


def test_submission_on_a_full_tmpfs_keeps_the_previous_file(tiny_disk):
    sub = tiny_disk / "submission.csv"
    good = pd.DataFrame({"id": ["0", "1"], "prediction": ["A B C", "B C D"]})
    write_csv_atomic(good, sub)
    before = sub.read_bytes()
    _fill(tiny_disk)
    big = pd.DataFrame({"id": [str(i) for i in range(20000)], "prediction": ["A B C"] * 20000})
    with pytest.raises(KitError, match="No space left on device; the previous file is unchanged"):
        write_csv_atomic(big, sub)
    assert sub.read_bytes() == before
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler.bin", "submission.csv"]  # no temp left


def test_predict_onto_a_full_tmpfs_fails_before_the_model_loads(tiny_disk, tmp_path):
    data = write_subset("science_exam", tmp_path, 3000)
    _fill(tiny_disk, leave=4 * 1024)
    res = run_kit("predict", "science_exam", "--data", data, "--out", tiny_disk / "submission.csv", timeout=120)
    assert res.returncode == 2 and "No space left on device" in res.stderr and "Traceback" not in res.stderr
    assert "Loading weights" not in res.stderr  # the fallback submission is written before any model


def test_checkpoint_on_a_full_tmpfs_keeps_results_in_memory(tiny_disk):
    ckpt = Checkpoint(tiny_disk / "run.ckpt.jsonl", "run-1", every=1)
    ckpt.load()
    ckpt.add({0: "first"})
    _fill(tiny_disk, leave=0)
    ckpt.add({i: "x" * 200 for i in range(1, 200)})  # does not fit: warned, kept
    assert read_results(tiny_disk / "run.ckpt.jsonl", "run-1") == {0: "first"}  # earlier lines intact
    (tiny_disk / "filler.bin").unlink()
    ckpt.add({200: "later"})  # room again: everything pending is written
    assert len(read_results(tiny_disk / "run.ckpt.jsonl", "run-1")) == 201


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_injected_enospc_on_the_final_submission_keeps_the_fallback(tmp_path, monkeypatch):
    """The fallback is on disk before the model runs; a full disk at the end leaves that valid file."""
    data = write_subset("science_exam", tmp_path, 4)
    out = tmp_path / "submission.csv"
    real = predict_module.write_csv_atomic
    calls = []

    def second_write_fails(df, path):
        calls.append(path)
        if len(calls) == 2:  # the disk fills halfway through writing the predictions

            def half_then_full(fh):
                fh.write("id,prediction\n1000,A")
                _enospc()

            return kio._atomic(path, half_then_full)
        return real(df, path)

    monkeypatch.setattr(predict_module, "write_csv_atomic", second_write_fails)
    with pytest.raises(KitError, match="No space left on device; the previous file is unchanged"):
        jobs.predict(PredictConfig("science_exam", str(data), out=str(out), progress=False))
    assert len(calls) == 2
    fallback = pd.read_csv(out, dtype=str)
    assert fallback["prediction"].tolist() == ["A B C"] * 4
    assert (tmp_path / "submission.csv.ckpt.jsonl").exists()  # the predictions survive for a rerun
    assert not list(tmp_path.glob(".submission.csv.*"))  # the half-written temp file is gone


def test_injected_enospc_while_saving_a_training_checkpoint(tmp_path, monkeypatch):
    import torch  # noqa: F401 - loaded for the real save below
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kaggle_kit.models import demo_model_dir, load_tokenizer
    from kaggle_kit.train import checkpoint

    from ..integration.test_train import small

    cfg = small(tmp_path)
    tok = load_tokenizer(demo_model_dir())
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(demo_model_dir()),
        LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"),
    )
    last = checkpoint.save(tmp_path / "run" / "last", model, tok, cfg)
    before = (last / "adapter_model.safetensors").read_bytes()
    monkeypatch.setattr(type(tok), "save_pretrained", _enospc)
    with pytest.raises(KitError, match="could not save checkpoint .*No space left on device; the previous checkpoint"):
        checkpoint.save(tmp_path / "run" / "last", model, tok, cfg)
    assert (last / "adapter_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["last"]  # the temp folder is gone
