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
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import ConfigError, KitError
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


# Torch's own packages: a vLLM wheel pins them, and the image's CUDA builds of them must stay.
TORCH_FAMILY = {"torch", "torchvision", "torchaudio", "triton"}


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
    vllm_torch: str | None = None,
) -> Path:
    """Write the wheels dataset folder: kit wheel, dependency wheels, requirements.txt, dataset-metadata.json.

    `packages` ({name: version}) defaults to closure(); `python` is the Kaggle image's Python (3.11 in 2025-26
    images); binary wheels are fetched for manylinux x86_64. `vllm_torch` (the image's torch version) adds
    the newest vLLM built for that torch and its dependencies, listed in requirements-vllm.txt.
    """
    if not (ROOT / "setup.py").is_file():
        raise KitError(f"`kaggle-kit wheels` builds the kit's wheel from a source checkout; {ROOT} is not one")
    out = Path(out)
    packages = closure() if packages is None else packages
    extra = vllm_set(vllm_torch, python, with_packages=packages) if vllm_torch else {}
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _build_kit_wheel(tmp)
    if packages or extra:
        _pip("download", "--no-deps", *_target(python), "-d", str(tmp), *pip_args, *_pins({**packages, **extra}))
    kit = md.version("kaggle-kit")
    reqs = [f"kaggle-kit=={kit}", *_pins(packages)]
    (tmp / "requirements.txt").write_text("\n".join(reqs) + "\n")
    if extra:
        (tmp / "requirements-vllm.txt").write_text("\n".join(_pins(extra)) + "\n")
    meta = {"title": DATASET_SLUG, "id": f"{user}/{DATASET_SLUG}", "licenses": [{"name": "apache-2.0"}]}
    (tmp / "dataset-metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    publish(tmp, out)
    log.info("%s: %d wheels for Python %s", out, len(list(out.glob("*.whl"))), python)
    return out


def _pins(packages: dict[str, str]) -> list[str]:
    return [f"{n}=={v}" for n, v in packages.items()]


def _target(python: str) -> list[str]:
    """pip's options for binary wheels of the Kaggle image's platform and Python."""
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    return ["--only-binary=:all:", *platforms, "--python-version", python, "--implementation", "cp"]


def vllm_release(torch_version: str, python: str = "3.11") -> str:
    """The newest vLLM release on the index whose wheel pins `torch_version` (the image's; a local
    suffix such as +cu124 is ignored). vLLM's torch pins rise with its releases, so a binary search
    reads the metadata of a handful of releases, not all of them."""
    from packaging.version import InvalidVersion, Version

    try:
        want = Version(torch_version.split("+")[0])
    except InvalidVersion:
        raise ConfigError("torch", f"{torch_version!r} is not a version (the image's torch, e.g. 2.6.0)") from None
    out = _pip("index", "versions", "vllm", *_target(python), constrained=False, quiet=False)
    found = re.search(r"Available versions: (.*)", out)
    versions = sorted({Version(v) for v in found.group(1).split(", ")} if found else set())
    pins: dict = {}

    def pin(v):
        if v not in pins:
            pins[v] = _torch_pin(str(v), python)
        return pins[v]

    lo, hi = 0, len(versions)  # the first release whose torch pin is above `want`
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if pin(versions[mid]) <= want else (lo, mid)
    if lo == 0 or pin(versions[lo - 1]) != want:
        near = ", ".join(f"vllm {v} pins torch {pins[v]}" for v in sorted(pins) if pins[v] > Version("0"))
        raise KitError(f"no vLLM release for Python {python} pins torch {want} (the image's); {near}")
    return str(versions[lo - 1])


def _torch_pin(vllm_version: str, python: str):
    """The torch version a vLLM release's wheel pins (`torch==X`); 0 where it pins none."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    report = json.loads(_dry_run([f"vllm=={vllm_version}"], python, deps=False))
    for line in report["install"][0]["metadata"].get("requires_dist", []):
        req = Requirement(line)
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if _norm(req.name) == "torch" and exact:
            return Version(exact[0].split("+")[0])
    return Version("0")


def vllm_set(torch_version: str, python: str = "3.11", with_packages: dict[str, str] | None = None) -> dict[str, str]:
    """{package: version} to add for vLLM on an image with `torch_version`: vLLM and its dependency
    closure resolved against that torch and the kit's own pins (`with_packages`, default closure()),
    minus torch's family, what the image has and those pins."""
    with_packages = closure() if with_packages is None else with_packages
    version = vllm_release(torch_version, python)
    pins = [f"vllm=={version}", f"torch=={torch_version.split('+')[0]}", *_pins(with_packages)]
    report = json.loads(_dry_run(pins, python))
    found = {_norm(i["metadata"]["name"]): i["metadata"]["version"] for i in report["install"]}
    drop = TORCH_FAMILY | IMAGE_HAS | {_norm(n) for n in with_packages}
    chosen = {n: v for n, v in sorted(found.items()) if n not in drop and not n.startswith("nvidia-")}
    log.info("vLLM %s for torch %s: %d wheels", version, torch_version, len(chosen))
    from packaging.version import Version

    from ..infer.vllm_backend import V0_LAST

    last = ".".join(map(str, V0_LAST))
    if Version(version) > Version(last):
        log.warning("vLLM %s has only its V1 engine, which does not run on a T4; a T4 needs vLLM <= %s", version, last)
    return chosen


def _dry_run(requirements: list[str], python: str, deps: bool = True) -> str:
    """pip's JSON installation report for `requirements` on the Kaggle platform, nothing installed."""
    import tempfile

    with tempfile.TemporaryDirectory() as target:
        args = ["install", "--dry-run", "--ignore-installed", "--report", "-", "--target", target]
        return _pip(*args, *([] if deps else ["--no-deps"]), *_target(python), *requirements, constrained=False)


def _build_kit_wheel(into: Path) -> None:
    """The kit's wheel, built from a scratch copy of its sources: nothing (build/, *.egg-info) is written
    into the checkout, and two builds at once cannot trip over each other's files."""
    with tempfile.TemporaryDirectory(prefix="kaggle-kit-src.") as src:
        for name in ("pyproject.toml", "setup.py", "README.md"):
            shutil.copy2(ROOT / name, Path(src) / name)
        shutil.copytree(ROOT / "kaggle_kit", Path(src) / "kaggle_kit", ignore=shutil.ignore_patterns("__pycache__"))
        _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(into), src)


def _pip(*args: str, constrained: bool = True, quiet: bool = True) -> str:
    """Run pip; its stdout. `constrained=False` drops a machine-wide constraints file (a cap on torch
    here): resolving for the image's torch must see every release. `quiet=False` for `pip index`, whose
    answer is its log."""
    env = None if constrained else {**os.environ, "PIP_CONSTRAINT": ""}
    res = subprocess.run(
        [sys.executable, "-m", "pip", *args, *(["-q"] if quiet else []), "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        env=env,
    )
    if res.returncode != 0:
        errors = [line for line in res.stderr.strip().splitlines() if not line.startswith("WARNING")]
        raise KitError(f"pip {args[0]} failed: {errors[-1] if errors else ''}")
    return res.stdout
