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

from ..conftest import ROOT

NEEDS_KAGGLE = ("kernel push", "kernel status", "kernel submit", "dataset push", "kit wheels", "data download")


def readme_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def commands() -> tuple[list[str], list[str]]:
    """(the commands to run, the ones left out) of README's bash blocks, continuation lines joined."""
    run, skipped = [], []
    for block in readme_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if not line or line.startswith("#"):
                continue
            offline = not any(x in line for x in NEEDS_KAGGLE) and "/kaggle/working" not in line
            (run if line.startswith("kaggle-kit") and offline else skipped).append(line)
    return run, skipped


def test_every_readme_command_runs_as_written(tmp_path):
    """In a scratch copy of the repo's data/ and configs/, so nothing lands in the checkout."""
    for folder in ("data", "configs", "notebooks"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    run, skipped = commands()
    assert len(run) >= 8 and all(not s.startswith("kaggle-kit predict") for s in skipped)
    print("left out (Kaggle's servers, a Kaggle machine or make):", *skipped, sep="\n  ")
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # deprecation warnings shown, as a notebook shows them
    for line in run:
        argv = [sys.executable, "-m", "kaggle_kit", *shlex.split(line)[1:]]
        r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
        assert r.returncode == 0, f"{line}\n{r.stdout[-1500:]}\n{r.stderr[-3000:]}"
        # quiet runs: no library deprecation (transformers' past_key_values), no hub-kernel warning
        noise = [x for x in r.stderr.splitlines() if "deprecat" in x.lower() or "kernels-community" in x]
        assert noise == [], f"{line}\n" + "\n".join(noise)
    (python,) = readme_blocks("python")
    r = subprocess.run([sys.executable, "-c", python], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
