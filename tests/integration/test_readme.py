"""Every command README.md shows runs as written, offline, on data/ with the demo models: the fenced
bash blocks' `kaggle-kit` lines (those that need Kaggle's servers, a Kaggle machine's files or `make`
are left out, and said so in the test's output) and the Python block."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from ..conftest import ROOT

NEEDS_KAGGLE = ("kernel push", "kernel status", "kernel submit", "dataset push", "kit wheels", "data download")


def readme_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def commands(block: str) -> tuple[list[str], list[str]]:
    """(the commands to run, the ones left out) of a bash block, continuation lines joined."""
    run, skipped = [], []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split("  #")[0].strip()
        if not line or line.startswith("#"):
            continue
        offline = not any(x in line for x in NEEDS_KAGGLE) and "/kaggle/working" not in line
        (run if line.startswith("kaggle-kit") and offline else skipped).append(line)
    return run, skipped


def scratch(tmp_path):
    """A scratch copy of the repo's data/, configs/ and notebooks/, so nothing lands in the checkout."""
    for folder in ("data", "configs", "notebooks"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    return tmp_path


# Each block runs on its own (its commands in order: a later one reads what an earlier one wrote).
BLOCKS = [b for b in readme_blocks("bash") if commands(b)[0]]


def test_the_blocks_run_cover_readmes_commands():
    """Every `kaggle-kit predict` line is run; what is left out is printed."""
    run = [line for b in BLOCKS for line in commands(b)[0]]
    skipped = [line for b in readme_blocks("bash") for line in commands(b)[1]]
    assert len(run) >= 8 and all(not s.startswith("kaggle-kit predict") for s in skipped)
    print("left out (Kaggle's servers, a Kaggle machine or make):", *skipped, sep="\n  ")


@pytest.mark.parametrize("block", BLOCKS, ids=[commands(b)[0][0].split()[1] for b in BLOCKS])
def test_every_readme_command_runs_as_written(block, tmp_path):
    cwd = scratch(tmp_path)
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # deprecation warnings shown, as a notebook shows them
    for line in commands(block)[0]:
        argv = [sys.executable, "-m", "kaggle_kit", *shlex.split(line)[1:]]
        r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
        assert r.returncode == 0, f"{line}\n{r.stdout[-1500:]}\n{r.stderr[-3000:]}"
        # quiet runs: no library deprecation (transformers' past_key_values), no hub-kernel warning
        noise = [x for x in r.stderr.splitlines() if "deprecat" in x.lower() or "kernels-community" in x]
        assert noise == [], f"{line}\n" + "\n".join(noise)


def test_the_readme_python_block_runs(tmp_path):
    (python,) = readme_blocks("python")
    r = subprocess.run(
        [sys.executable, "-c", python], cwd=scratch(tmp_path), capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
