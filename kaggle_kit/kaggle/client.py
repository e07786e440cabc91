"""Kaggle actions through the official `kaggle` client's Python API (never our own HTTP calls).

Credentials come the client's way: KAGGLE_USERNAME + KAGGLE_KEY, KAGGLE_API_TOKEN, or kaggle.json in
KAGGLE_CONFIG_DIR (default ~/.kaggle). The kit never prints, logs or writes them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import KitError
from . import metadata

log = logging.getLogger("kaggle_kit")


def api():
    """An authenticated kaggle.api.KaggleApi; KitError saying how to set credentials when there are none."""
    # `import kaggle` authenticates on import and prints a help text without credentials: keep it quiet.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            from kaggle.api.kaggle_api_extended import KaggleApi
        except ImportError:
            raise KitError("the Kaggle client is missing: pip install 'kaggle>=2.0'") from None
        client = KaggleApi()
        try:
            client.authenticate()
        except SystemExit:
            raise KitError(
                "no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY, or put kaggle.json in "
                "~/.kaggle (or $KAGGLE_CONFIG_DIR); create a token at kaggle.com/settings"
            ) from None
    return client


def _call(what: str, fn, *args, **kwargs):
    """Run a client call; its HTTP or validation errors become one KitError line."""
    try:
        return fn(*args, **kwargs)
    except ValueError as exc:
        raise KitError(f"{what}: {exc}") from None
    except OSError as exc:  # requests' HTTPError and ConnectionError are OSErrors
        status = getattr(getattr(exc, "response", None), "status_code", None)
        raise KitError(f"{what} failed{f' (HTTP {status})' if status else ''}: {exc}") from None


@dataclass
class PushResult:
    """What Kaggle answered to a kernel push."""

    ref: str
    url: str
    version: int | None


def push(folder: str | Path, timeout_s: int | None = None) -> PushResult:
    """Push a built kernel folder (metadata checked again first); returns its version."""
    meta = metadata.read(folder)
    metadata.validate(meta, folder)
    res = _call("kernel push", api().kernels_push, str(folder), str(timeout_s) if timeout_s else None)
    if getattr(res, "error", None):
        raise KitError(f"kernel push refused by Kaggle: {res.error}")
    return PushResult(res.ref, res.url, res.version_number)


def status(kernel: str) -> tuple[str, str]:
    """(status, failure message) of a kernel's latest run, e.g. ('complete', '')."""
    res = _call("kernel status", api().kernels_status, kernel)
    state = getattr(res.status, "name", str(res.status)).lower()
    return state.removeprefix("kernel_worker_status_"), res.failure_message or ""


def output(kernel: str, to: str | Path) -> list[str]:
    """Download a kernel's output files (and its log) into `to`; returns the paths."""
    Path(to).mkdir(parents=True, exist_ok=True)
    files, _ = _call("kernel output", api().kernels_output, kernel, str(to), force=True, quiet=True)
    return files


def submit(competition: str, kernel: str, version: int | None, file_name: str = "submission.csv", message: str = ""):
    """A code-competition submission of a kernel version's output file; returns Kaggle's message."""
    res = _call(
        "submit",
        api().competition_submit_code,
        file_name,
        message or f"kaggle-kit {kernel} v{version}",
        competition=competition,
        kernel=kernel,
        kernel_version=version,
        quiet=True,
    )
    return getattr(res, "message", "") or "submitted"


def dataset_push(folder: str | Path, message: str = "kaggle-kit wheels") -> str:
    """Upload a dataset folder (with dataset-metadata.json): a new version, or the dataset if it is new."""
    folder = Path(folder)
    if not (folder / "dataset-metadata.json").is_file():
        raise KitError(f"{folder}/dataset-metadata.json not found; build it with `kaggle-kit wheels`")
    client = api()
    try:
        res = client.dataset_create_version(str(folder), message, quiet=True, dir_mode="skip")
    except OSError as exc:
        if getattr(getattr(exc, "response", None), "status_code", None) != 404:
            raise KitError(f"dataset push failed: {exc}") from None
        log.info("dataset does not exist yet; creating it (private)")
        res = _call("dataset create", client.dataset_create_new, str(folder), public=False, quiet=True)
    if getattr(res, "error", None):
        raise KitError(f"dataset push refused by Kaggle: {res.error}")
    return getattr(res, "url", "") or "pushed"


def download(competition: str, to: str | Path) -> list[Path]:
    """Fetch a competition's files into `to` and unzip them there; returns the files."""
    to = Path(to)
    to.mkdir(parents=True, exist_ok=True)
    _call("data download", api().competition_download_files, competition, path=str(to), force=True, quiet=True)
    archive = to / f"{competition}.zip"
    if not archive.is_file():
        raise KitError(f"the client wrote no {archive.name} in {to}")
    try:
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if Path(name).is_absolute() or ".." in Path(name).parts:
                    raise KitError(f"{archive}: refusing member {name!r} outside the target folder")
            z.extractall(to)
            names = z.namelist()
    except zipfile.BadZipFile:
        raise KitError(f"{archive} is not a zip archive") from None
    archive.unlink()
    return [to / n for n in names if not n.endswith("/")]


# Files of a training folder that only resuming needs (optimizer, RNG, data position): never uploaded.
RESUME_ONLY = {"trainer_state.pt"}


def model_push(folder: str | Path, handle: str, message: str = "", license_name: str = "Apache 2.0") -> str:
    """Upload an adapter (or model) folder to Kaggle Models as `handle` (owner/model/framework/variation):
    a new version of the variation, creating the model (private) and the variation when they do not exist.
    The folder is scanned for credentials first; files only resuming needs stay behind."""
    import shutil
    import tempfile

    from .secrets import refuse_secrets

    folder = Path(folder)
    owner, model, framework, variation = _model_handle(handle)
    if not ((folder / "adapter_config.json").is_file() or (folder / "config.json").is_file()):
        raise KitError(f"{folder}: no adapter_config.json or config.json; give an adapter or model folder")
    refuse_secrets([folder])
    client = api()
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / variation
        shutil.copytree(folder, stage, ignore=lambda _, names: [n for n in names if n in RESUME_ONLY])
        try:
            res = client.model_instance_version_create(handle, str(stage), message, quiet=True, dir_mode="zip")
        except OSError as exc:
            if getattr(getattr(exc, "response", None), "status_code", None) != 404:
                raise KitError(f"model push failed: {exc}") from None
            log.info("no variation %s yet; creating it", handle)
            res = _create_model_instance(client, stage, owner, model, framework, variation, license_name)
    if getattr(res, "error", None):
        raise KitError(f"model push refused by Kaggle: {res.error}")
    return getattr(res, "url", "") or f"pushed {handle}"


def _model_handle(handle: str) -> tuple[str, str, str, str]:
    parts = handle.split("/")
    if len(parts) != 4 or not all(parts):
        example = "me/lmsys-gemma/transformers/r16"
        raise KitError(f"model handle {handle!r}: expected owner/model/framework/variation, e.g. {example}")
    return tuple(parts)


def _create_model_instance(client, stage: Path, owner, model, framework, variation, license_name):
    """Create the model (if it is missing, private) and its variation from the files in `stage`."""
    import json

    try:
        client.model_get(f"{owner}/{model}")
    except OSError as exc:
        if getattr(getattr(exc, "response", None), "status_code", None) != 404:
            raise KitError(f"model push failed: {exc}") from None
        meta = {"ownerSlug": owner, "slug": model, "title": model, "isPrivate": True, "description": ""}
        (stage / "model-metadata.json").write_text(json.dumps(meta, indent=2))
        res = _call("model create", client.model_create_new, str(stage))
        if getattr(res, "error", None):
            raise KitError(f"model create refused by Kaggle: {res.error}") from None
    meta = {
        "ownerSlug": owner,
        "modelSlug": model,
        "instanceSlug": variation,
        "framework": framework,
        "licenseName": license_name,
        "overview": "Trained with kaggle-kit",
    }
    (stage / "model-instance-metadata.json").write_text(json.dumps(meta, indent=2))
    return _call("model variation create", client.model_instance_create, str(stage), quiet=True, dir_mode="zip")
