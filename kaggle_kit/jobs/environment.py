"""`kaggle-kit env`: what this machine gives a run, to paste into a bug report (as `accelerate env` does).

Versions of the kit and the libraries it runs on, the device and dtype profile the kit would pick, the
Kaggle folders and run kind, and the models `--model` can name here. Reads only: it converts no demo
model and loads no weights.
"""

from __future__ import annotations

import importlib.metadata as md
import platform
import sys

from .. import __version__, env
from ..hardware import detect
from ..models import available_models
from ..provision import DEMOS, cache_dir

PACKAGES = (
    "torch", "transformers", "peft", "accelerate", "bitsandbytes", "sentence-transformers", "vllm",
    "safetensors", "gguf", "numpy", "pandas", "scipy", "scikit-learn", "kaggle", "fastapi",
)  # fmt: skip


def _version(package: str) -> str:
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return "not installed"


def _gpus() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(i)
        gib = torch.cuda.get_device_properties(i).total_memory / 2**30
        out.append(f"{i}: {torch.cuda.get_device_name(i)} (sm_{major}{minor}, {gib:.0f} GiB)")
    return out


def _demo_models() -> list[str]:
    """Each demo name with where its converted folder is, or that the first use converts it."""
    out = []
    for name, demo in DEMOS.items():
        folder = cache_dir() / demo.folder
        state = str(folder) if (folder / "config.json").is_file() else f"not converted yet (needs {demo.install})"
        out.append(f"{name}: {state}")
    return out


def _model_folders() -> list[str]:
    """Model folders under /kaggle/input and the cache, other than the converted demo models."""
    demos = {str(cache_dir() / demo.folder) for demo in DEMOS.values()}
    found = [m for m in available_models() if m not in DEMOS and m not in demos]
    return found or [f"none under {env.KAGGLE_INPUT} or {cache_dir()}"]


def report() -> dict:
    """{section: {field: value}} describing this machine for the kit."""
    import torch

    profile = detect()
    run_kind = ("scored rerun" if env.is_rerun() else "commit run") if env.on_kaggle() else "local"
    return {
        "kit": {
            "kaggle-kit": __version__,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "packages": {name: _version(name) for name in PACKAGES},
        "device": {
            "profile": f"{profile.device} {profile.dtype} ({profile.reason})",
            "torch cuda": torch.version.cuda or "none (CPU build)",
            "gpus": _gpus() or ["none"],
            "cpu threads": torch.get_num_threads(),
        },
        "kaggle": {
            "run": run_kind,
            "input dir": str(env.KAGGLE_INPUT),
            "working dir": str(env.KAGGLE_WORKING),
        },
        "models": {
            "cache": str(cache_dir()),
            "demo": _demo_models(),
            "folders": _model_folders(),
        },
    }


def format_report(info: dict) -> str:
    """The report as the indented text `kaggle-kit env` prints."""
    lines = []
    for section, fields in info.items():
        lines.append(f"{section}:")
        for key, value in fields.items():
            if isinstance(value, list):
                lines.append(f"  {key}:")
                lines += [f"    - {item}" for item in value]
            else:
                lines.append(f"  {key}: {value}")
    return "\n".join(lines)
