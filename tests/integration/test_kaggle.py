"""The kaggle-kit kernel / dataset / data commands through the official client against a loopback double,
and the offline wheels dataset installed into a fresh venv with --no-index."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kaggle_kit.kaggle.secrets import find_secrets

from ..conftest import FAKE_KAGGLE_KEY, ROOT

KIT = [sys.executable, "-m", "kaggle_kit"]
KERNEL = "kit-tester/kaggle-kit-lmsys"


def run(args, env, ok=True):
    res = subprocess.run([*KIT, *args], env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    if ok and res.returncode != 0:
        pytest.fail(f"{args}: exit {res.returncode}\n{res.stdout}\n{res.stderr}")
    assert FAKE_KAGGLE_KEY not in res.stdout + res.stderr  # never printed or logged
    return res


def test_kernel_build_push_status_output_submit(tmp_path, kaggle_double):
    env = kaggle_double.env(tmp_path)
    kaggle_double.replies.update(
        SaveKernel={"ref": f"/code/{KERNEL}", "url": f"https://www.kaggle.com/code/{KERNEL}", "versionNumber": 7},
        GetKernelSessionStatus={"status": "COMPLETE", "failureMessage": ""},
        ListKernelSessionOutput={
            "files": [{"fileName": "submission.csv", "url": "http://localhost/files/submission.csv"}],
            "log": '[{"data": "done"}]',
        },
        CreateCodeSubmission={"message": "Submission successful"},
    )
    kaggle_double.files["submission.csv"] = b"id,winner_model_a,winner_model_b,winner_tie\n1,0.3,0.3,0.4\n"
    built = tmp_path / "kernel"
    out = run(
        [
            "kernel",
            "build",
            "notebooks/lmsys",
            "--out",
            str(built),
            "--id",
            KERNEL,
            "--accelerator",
            "t4x2",
            "--dataset",
            "kit-tester/kaggle-kit-wheels",
            "--model",
            "google/gemma-2/transformers/gemma-2-9b-it/2",
        ],
        env,
    )
    assert "NvidiaTeslaT4, internet off" in out.stdout
    assert "version 7" in run(["kernel", "push", str(built), "--timeout", "32400"], env).stdout
    (save,) = kaggle_double.calls("SaveKernel")
    body = save["json"]
    assert body["slug"] == KERNEL and body["newTitle"] == "kaggle kit lmsys"
    assert body["machineShape"] == "NvidiaTeslaT4" and body["enableGpu"] is True
    assert body.get("enableInternet", False) is False  # false fields may be omitted on the wire
    assert body["competitionDataSources"] == ["lmsys-chatbot-arena"]
    assert "kit-tester/kaggle-kit-wheels" in body["datasetDataSources"]
    assert body["modelDataSources"] == ["google/gemma-2/transformers/gemma-2-9b-it/2"]
    assert body["sessionTimeoutSeconds"] == 32400
    assert json.loads(body["text"])["cells"][0]["cell_type"] == "markdown"  # the notebook itself
    assert save["headers"]["Authorization"].startswith("Basic ")  # credentials travel only as auth
    assert FAKE_KAGGLE_KEY not in save["body"].decode()

    assert "complete" in run(["kernel", "status", KERNEL], env).stdout
    (st,) = kaggle_double.calls("GetKernelSessionStatus")
    assert st["json"] == {"userName": "kit-tester", "kernelSlug": "kaggle-kit-lmsys"}

    run(["kernel", "output", KERNEL, "--to", str(tmp_path / "out")], env)
    assert (tmp_path / "out" / "submission.csv").read_bytes() == kaggle_double.files["submission.csv"]
    assert (tmp_path / "out" / "kaggle-kit-lmsys.log").is_file()

    assert (
        "Submission successful"
        in run(["kernel", "submit", KERNEL, "--competition", "lmsys-chatbot-arena", "--version", "7"], env).stdout
    )
    (sub,) = kaggle_double.calls("CreateCodeSubmission")
    assert sub["json"]["competitionName"] == "lmsys-chatbot-arena"
    assert sub["json"]["kernelSlug"] == "kaggle-kit-lmsys" and sub["json"]["kernelVersion"] == 7
    assert sub["json"]["fileName"] == "submission.csv"


def test_push_refuses_invalid_metadata_before_any_request(tmp_path, kaggle_double):
    env = kaggle_double.env(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "lmsys.ipynb").write_text("{}")
    meta = json.loads((ROOT / "notebooks" / "lmsys" / "kernel-metadata.json").read_text())
    (bad / "kernel-metadata.json").write_text(json.dumps({**meta, "title": "Something Else Entirely"}))
    res = run(["kernel", "push", str(bad)], env, ok=False)
    assert res.returncode == 2 and "config field 'title'" in res.stderr
    assert kaggle_double.requests == []


def test_status_error_and_http_errors_are_one_line(tmp_path, kaggle_double):
    env = kaggle_double.env(tmp_path)
    kaggle_double.replies["GetKernelSessionStatus"] = {"status": "ERROR", "failureMessage": "CUDA out of memory"}
    res = run(["kernel", "status", KERNEL], env, ok=False)
    assert res.returncode == 1 and "error (CUDA out of memory)" in res.stdout
    kaggle_double.replies["GetKernelSessionStatus"] = (500, {"code": 500, "message": "backend down"})
    res = run(["kernel", "status", KERNEL], env, ok=False)
    assert (
        res.returncode == 2 and res.stderr.startswith("error: kernel status failed") and "Traceback" not in res.stderr
    )


def test_no_credentials_says_how_to_set_them(tmp_path, kaggle_double):
    env = kaggle_double.env(tmp_path)
    del env["KAGGLE_USERNAME"], env["KAGGLE_KEY"]
    res = run(["kernel", "status", KERNEL], env, ok=False)
    assert res.returncode == 2 and "no Kaggle credentials" in res.stderr
    assert kaggle_double.requests == []


def test_data_download_fetches_and_unzips(tmp_path, kaggle_double):
    env = kaggle_double.env(tmp_path)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in ("train.csv", "test.csv", "sample_submission.csv"):
            z.write(ROOT / "data" / "lmsys" / name, name)
    kaggle_double.files["lmsys-chatbot-arena.zip"] = buf.getvalue()
    to = tmp_path / "data" / "lmsys"
    out = run(["data", "download", "lmsys-chatbot-arena", "--to", str(to)], env).stdout
    assert "3 files" in out
    assert (to / "test.csv").read_bytes() == (ROOT / "data" / "lmsys" / "test.csv").read_bytes()
    assert not (to / "lmsys-chatbot-arena.zip").exists()
    (dl,) = kaggle_double.calls("DownloadDataFiles")
    assert dl["json"] == {"competitionName": "lmsys-chatbot-arena"}


def _fresh_venv_install(wheels: Path, venv: Path) -> subprocess.CompletedProcess:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}  # no find-links from this machine's pip.conf
    env.pop("PIP_FIND_LINKS", None)
    res = subprocess.run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--find-links",
            str(wheels),
            "--no-deps",
            "-r",
            str(wheels / "requirements.txt"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    return subprocess.run(
        [str(py), "-c", "import kaggle_kit, safetensors, sys; print(kaggle_kit.__version__, kaggle_kit.__file__)"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=venv,  # not this checkout, whose kaggle_kit/ folder would shadow the installed wheel
    )


def test_wheels_dataset_installs_offline_in_a_fresh_venv_and_pushes(tmp_path, kaggle_double):
    from kaggle_kit.kaggle.wheels import build_wheels, closure

    # the real dependency set (what `kaggle-kit wheels` downloads) leaves the image's torch alone
    full = closure()
    assert {"transformers", "peft", "bitsandbytes", "accelerate", "tokenizers"} <= set(full)
    assert not {"torch", "numpy", "pandas"} & set(full)

    # a small subset keeps the download short: the kit, a pure wheel and a binary (manylinux) wheel
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    subset = {k: full[k] for k in ("safetensors", "gguf")}
    wheels = build_wheels(tmp_path / "kaggle-kit-wheels", packages=subset, python=py, user="kit-tester")
    names = sorted(p.name for p in wheels.glob("*.whl"))
    assert [n.split("-")[0] for n in names] == ["gguf", "kaggle_kit", "safetensors"]
    # the kit's wheel holds its sources as they are (built from a scratch copy: a stale build/ folder in the
    # checkout once shipped modules deleted long before)
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / "kaggle_kit").rglob("*.py")}
    with zipfile.ZipFile(next(wheels.glob("kaggle_kit-*.whl"))) as whl:
        assert {n for n in whl.namelist() if n.endswith(".py")} == source
    assert json.loads((wheels / "dataset-metadata.json").read_text())["id"] == "kit-tester/kaggle-kit-wheels"
    res = _fresh_venv_install(wheels, tmp_path / "venv")
    assert res.returncode == 0, res.stderr
    version, where = res.stdout.split()
    assert version == "0.1.0" and str(tmp_path / "venv") in where  # the wheel, not this checkout

    env = kaggle_double.env(tmp_path)
    kaggle_double.replies.update(
        StartBlobUpload={"token": "blob-1", "createUrl": "http://localhost/upload/blob-1"},
        CreateDatasetVersion=(404, {"code": 404, "message": "dataset not found"}),
        GetDatasetStatus=(404, {"code": 404, "message": "dataset not found"}),
        CreateDataset={
            "ref": "kit-tester/kaggle-kit-wheels",
            "url": "https://www.kaggle.com/datasets/kit-tester/kaggle-kit-wheels",
        },
    )
    out = run(["dataset", "push", str(wheels)], env).stdout
    assert "kaggle-kit-wheels" in out
    (create,) = kaggle_double.calls("CreateDataset")
    assert create["json"]["ownerSlug"] == "kit-tester" and create["json"].get("isPrivate", True) is True
    uploaded = {json.loads(r["body"])["name"] for r in kaggle_double.requests if r["path"].endswith("StartBlobUpload")}
    assert set(names) <= uploaded and kaggle_double.uploads  # the wheel bytes went up too
    assert find_secrets([wheels], [FAKE_KAGGLE_KEY]) == []


def test_built_artifacts_never_hold_credentials(tmp_path, monkeypatch):
    """With fake credentials set (env and kaggle.json), build a kernel, run a notebook, build wheels: scan all."""
    from kaggle_kit.kaggle import metadata
    from kaggle_kit.kaggle.wheels import build_wheels

    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "kaggle.json").write_text(json.dumps({"username": "kit-tester", "key": "j50n-k3y-abcdef0123456789"}))
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KAGGLE_KEY)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(cfg))
    kernels = [metadata.build(ROOT / "notebooks" / n, tmp_path / "k" / n) for n in ("lmsys", "science_exam")]
    wheels = build_wheels(tmp_path / "w", packages={})
    secrets = [FAKE_KAGGLE_KEY, "j50n-k3y-abcdef0123456789"]
    assert find_secrets([*kernels, wheels], secrets) == []
    # the scanner itself finds a planted value, also inside a wheel
    planted = tmp_path / "planted.whl"
    with zipfile.ZipFile(planted, "w") as z:
        z.writestr("pkg/config.py", f"KEY = '{FAKE_KAGGLE_KEY}'")
    assert find_secrets([planted], secrets) == [str(planted), f"{planted}!pkg/config.py"]


def _adapter_folder(path: Path) -> Path:
    """A training output folder as `kaggle-kit train` leaves it: adapter files plus the resume-only state."""
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "task_type": "CAUSAL_LM"}))
    (path / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    (path / "calibration.json").write_text(json.dumps({"temperature": 1.1}))
    (path / "trainer_state.pt").write_bytes(b"\1" * 64)
    return path


def test_model_push_creates_model_and_variation_then_versions_it(tmp_path, kaggle_double):
    adapter = _adapter_folder(tmp_path / "final")
    env = kaggle_double.env(tmp_path)
    handle = "kit-tester/lmsys-smollm2/transformers/r8"
    not_found = (404, {"code": 404, "message": "not found"})
    kaggle_double.replies.update(
        StartBlobUpload={"token": "blob-1", "createUrl": "http://localhost/upload/blob-1"},
        CreateModelInstanceVersion=not_found,
        GetModel=not_found,
        CreateModel={
            "ref": "kit-tester/lmsys-smollm2",
            "url": "https://www.kaggle.com/models/kit-tester/lmsys-smollm2",
        },
        CreateModelInstance={"ref": handle, "url": f"https://www.kaggle.com/models/{handle}"},
    )
    out = run(["model", "push", str(adapter), "--handle", handle, "--message", "first"], env).stdout
    assert f"https://www.kaggle.com/models/{handle}" in out
    (model,) = kaggle_double.calls("CreateModel")
    assert model["json"]["ownerSlug"] == "kit-tester" and model["json"]["slug"] == "lmsys-smollm2"
    assert model["json"].get("isPrivate", True) is True
    (instance,) = kaggle_double.calls("CreateModelInstance")
    assert instance["json"]["modelSlug"] == "lmsys-smollm2" and instance["json"]["body"]["instanceSlug"] == "r8"
    assert instance["json"]["body"]["framework"].lower().endswith("transformers")
    uploaded = {c["json"]["name"] for c in kaggle_double.calls("StartBlobUpload")}
    assert uploaded == {"adapter_config.json", "adapter_model.safetensors", "calibration.json"}

    # the variation exists now: the next push is a new version of it, nothing created
    kaggle_double.requests.clear()
    kaggle_double.replies["CreateModelInstanceVersion"] = {
        "ref": handle,
        "url": f"https://www.kaggle.com/models/{handle}/2",
    }
    out = run(["model", "push", str(adapter), "--handle", handle], env).stdout
    assert f"{handle}/2" in out
    assert not kaggle_double.calls("CreateModel") and not kaggle_double.calls("CreateModelInstance")
    assert len(kaggle_double.calls("CreateModelInstanceVersion")) == 1


def test_model_push_refuses_bad_handle_and_secrets_before_any_request(tmp_path, kaggle_double):
    adapter = _adapter_folder(tmp_path / "final")
    env = kaggle_double.env(tmp_path)
    res = run(["model", "push", str(adapter), "--handle", "kit-tester/lmsys"], env, ok=False)
    assert res.returncode == 2 and "owner/model/framework/variation" in res.stderr
    (adapter / "notes.txt").write_text(f"key {FAKE_KAGGLE_KEY}")
    res = run(["model", "push", str(adapter), "--handle", "kit-tester/m/transformers/v1"], env, ok=False)
    assert res.returncode == 2 and "notes.txt" in res.stderr
    res = run(["model", "push", str(tmp_path), "--handle", "kit-tester/m/transformers/v1"], env, ok=False)
    assert res.returncode == 2 and "no adapter_config.json" in res.stderr
    assert kaggle_double.requests == []


def test_wheels_with_vllm_picks_the_release_built_for_the_image_torch(tmp_path):
    """Read from the package index (metadata only): vLLM pins torch exactly, so the image's torch decides."""
    from kaggle_kit.errors import KitError
    from kaggle_kit.kaggle.wheels import vllm_release

    assert vllm_release("2.6.0+cu124") == "0.8.5.post1"  # the next release pins a newer torch
    with pytest.raises(KitError, match="no vLLM release for Python 3.11 pins torch 1.13.1"):
        vllm_release("1.13.1")
    res = run(["wheels", "--out", str(tmp_path / "w"), "--with", "vllm"], dict(os.environ), ok=False)
    assert res.returncode == 2 and "image's torch" in res.stderr and not (tmp_path / "w").exists()
