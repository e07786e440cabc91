"""The offline wheels dataset: the kit's wheel plus pinned wheels of what a Kaggle GPU image lacks.

Kernels run with the internet off, so everything the kit needs beyond the image is installed from this
dataset: `pip install --no-index --find-links /kaggle/input/kaggle-kit-wheels -r .../requirements.txt`.
Versions are the ones installed here (the ones the tests ran with). The image keeps its own torch and
the ABI-bound scientific stack: replacing those offline breaks CUDA builds.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import KitError
from .secrets import publish

log = logging.getLogger("kaggle_kit")

ROOT = Path(__file__).resolve().parents[2]
DATASET_SLUG = "kaggle-kit-wheels"
# Left to the Kaggle image: CUDA / ABI-bound builds and what every image carries.
IMAGE_HAS = {
    "torch",
    "triton",
    "numpy",
    "scipy",
    "pandas",
    "scikit-learn",
    "matplotlib",
    "pillow",
    "sympy",
    "networkx",
    "jinja2",
    "markupsafe",
    "requests",
    "urllib3",
    "certifi",
    "idna",
    "charset-normalizer",
    "psutil",
    "filelock",
    "fsspec",
    "packaging",
    "typing-extensions",
    "pyyaml",
    "tqdm",
    "joblib",
    "threadpoolctl",
    "python-dateutil",
    "pytz",
    "tzdata",
    "six",
    "setuptools",
    "mpmath",
    "contourpy",
    "cycler",
    "fonttools",
    "kiwisolver",
    "pyparsing",
}
# Kaggle's GPU images are Ubuntu 22.04 (glibc 2.35): any manylinux wheel up to that glibc installs there.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(35, 4, -1)] + ["manylinux2014_x86_64"]
# The kit's runtime requirements on Kaggle: its install_requires plus bitsandbytes (4-bit on T4).
ROOTS = ["transformers", "accelerate", "peft", "safetensors", "gguf", "sentence-transformers", "bitsandbytes"]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[str] = ROOTS, skip: set[str] = IMAGE_HAS) -> dict[str, str]:
    """{package: installed version} for `roots` and their runtime dependencies, minus `skip` (nvidia-* too)."""
    from packaging.requirements import Requirement

    found: dict[str, str] = {}
    todo = [_norm(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in found or name in skip or name.startswith("nvidia-"):
            continue
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            raise KitError(f"{name} is not installed here; the wheels dataset pins installed versions") from None
        for line in md.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(_norm(req.name))
    return dict(sorted(found.items()))


def build_wheels(
    out: str | Path,
    *,
    packages: dict[str, str] | None = None,
    python: str = "3.11",
    user: str = "kagglekit",
    pip_args: list[str] = (),
) -> Path:
    """Write the wheels dataset folder: kit wheel, dependency wheels, requirements.txt, dataset-metadata.json.

    `packages` ({name: version}) defaults to closure(); `python` is the Kaggle image's Python (3.11 in 2025-26
    images); binary wheels are fetched for manylinux x86_64.
    """
    if not (ROOT / "setup.py").is_file():
        raise KitError(f"`kaggle-kit wheels` builds the kit's wheel from a source checkout; {ROOT} is not one")
    out = Path(out)
    packages = closure() if packages is None else packages
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp), str(ROOT))
    if packages:
        platforms = [a for p in PLATFORMS for a in ("--platform", p)]
        _pip(
            "download",
            "--no-deps",
            "--only-binary=:all:",
            *platforms,
            "--python-version",
            python,
            "--implementation",
            "cp",
            "-d",
            str(tmp),
            *pip_args,
            *(f"{n}=={v}" for n, v in packages.items()),
        )
    kit = md.version("kaggle-kit")
    reqs = [f"kaggle-kit=={kit}", *(f"{n}=={v}" for n, v in packages.items())]
    (tmp / "requirements.txt").write_text("\n".join(reqs) + "\n")
    meta = {"title": DATASET_SLUG, "id": f"{user}/{DATASET_SLUG}", "licenses": [{"name": "apache-2.0"}]}
    (tmp / "dataset-metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    publish(tmp, out)
    log.info("%s: %d wheels for Python %s", out, len(list(out.glob("*.whl"))), python)
    return out


def _pip(*args: str) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "pip", *args, "-q", "--disable-pip-version-check"], capture_output=True, text=True
    )
    if res.returncode != 0:
        raise KitError(f"pip {args[0]} failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ''}")
