"""What every bench's JSON records besides its figures (the commit it ran, the machine it ran on), and
the model part of its file name."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """The short commit, with '+changes' when the working tree differs from it."""
    res = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return res.stdout.strip() + ("+changes" if dirty else "")


def machine() -> str:
    """The CPU's model name and core count, and the GPU's name where torch sees one:
    'Intel(R) Xeon(R) Processor, 2 cores' on this project's VM."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = f"{name}, {len(os.sched_getaffinity(0))} cores"
    try:
        import torch

        if torch.cuda.is_available():
            out += f"; {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    except ImportError:
        pass
    return out


def model_suffix(model: str) -> str:
    """The results file's model part: '' for the demo model, '_demo_gemma3', or a model folder's name."""
    if model == "demo":
        return ""
    return "_" + (Path(model).name if Path(model).is_dir() else model.replace(":", "_").replace("/", "_"))
