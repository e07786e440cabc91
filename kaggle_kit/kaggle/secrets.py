"""Keep Kaggle credentials out of everything the kit builds: kernels, wheel datasets, notebooks, logs."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

from ..errors import KitError

# Values shorter than this are not searched for (a 1-3 character "key" would match everywhere).
MIN_SECRET = 8


def credential_values() -> list[str]:
    """The credential values set here: KAGGLE_KEY, KAGGLE_API_TOKEN, and the key in kaggle.json."""
    values = [os.environ.get("KAGGLE_KEY"), os.environ.get("KAGGLE_API_TOKEN")]
    config = Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle") / "kaggle.json"
    try:
        values.append(json.loads(config.read_text()).get("key"))
    except (OSError, ValueError, AttributeError):
        pass
    return sorted({v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET})


def _contents(path: Path):
    """(name, bytes) of a file, and of each member when it is a wheel or zip."""
    data = path.read_bytes()
    yield str(path), data
    if path.suffix in (".whl", ".zip"):
        try:
            with zipfile.ZipFile(path) as z:
                for m in z.namelist():
                    yield f"{path}!{m}", z.read(m)
        except zipfile.BadZipFile:
            pass


def find_secrets(paths, values: list[str] | None = None) -> list[str]:
    """Files (wheel members too) under `paths` that contain a credential value; never the value itself."""
    values = credential_values() if values is None else values
    needles = [v.encode() for v in values if len(v) >= MIN_SECRET]
    if not needles:
        return []
    hits = []
    for root in map(Path, paths):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            hits += [name for name, data in _contents(f) if any(n in data for n in needles)]
    return hits


def refuse_secrets(paths) -> None:
    """KitError naming the files if any built artifact holds a credential value."""
    hits = find_secrets(paths)
    if hits:
        raise KitError(
            f"refusing: a Kaggle credential value appears in {', '.join(hits[:5])}; remove it (never put "
            "KAGGLE_KEY in a notebook or config: the client reads it from the environment or kaggle.json)"
        )


def publish(tmp: Path, out: Path) -> Path:
    """Move a built folder from `tmp` to `out` (replacing it) once it is free of credentials; else delete it."""
    try:
        refuse_secrets([tmp])
    except KitError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    from ..io import replace_folder

    return replace_folder(tmp, out)
