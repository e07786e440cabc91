"""No credential value in logs, submissions, checkpoints or the configs saved with them.

Kernels and the wheels dataset are scanned in tests/integration/test_kaggle.py; this covers predict and
train run with fake credentials in every place the Kaggle client reads them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from kaggle_kit.kaggle.secrets import find_secrets

from ..conftest import DATA, write_subset

KEY = "k3y-from-env-0123456789abcdef"
TOKEN = "KGAT_t0k3n-0123456789abcdef"
JSON_KEY = "k3y-from-json-0123456789abcdef"


def test_predict_and_train_never_write_or_log_credentials(tmp_path):
    cfg = tmp_path / "kaggle-config"
    cfg.mkdir()
    (cfg / "kaggle.json").write_text(json.dumps({"username": "kit-tester", "key": JSON_KEY}))
    env = {
        **os.environ,
        "KAGGLE_USERNAME": "kit-tester",
        "KAGGLE_KEY": KEY,
        "KAGGLE_API_TOKEN": TOKEN,
        "KAGGLE_CONFIG_DIR": str(cfg),
    }
    data = write_subset("science_exam", tmp_path, 4)
    runs = [
        [
            sys.executable,
            "-m",
            "kaggle_kit",
            "-v",
            "predict",
            "science_exam",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "out" / "submission.csv"),
            "--budget",
            "5m",
        ],
        [
            sys.executable,
            "-m",
            "kaggle_kit",
            "-v",
            "train",
            "alpaca",
            "--set",
            f"train={DATA / 'alpaca' / 'train.json'}",
            "--set",
            f"out={tmp_path / 'out' / 'train'}",
            "--set",
            "max_steps=1",
            "--set",
            "eval_every=1",
            "--set",
            "max_length=96",
            "--set",
            "batch_size=1",
            "--set",
            "lora_r=2",
            "--set",
            "eval_metric=false",
            "--set",
            "progress=false",
        ],
    ]
    logs = tmp_path / "logs"
    logs.mkdir()
    for i, cmd in enumerate(runs):
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        (logs / f"run{i}.log").write_text(res.stdout + res.stderr)
    secrets = [KEY, TOKEN, JSON_KEY]
    assert (tmp_path / "out" / "train" / "last" / "kit_config.json").is_file()
    assert find_secrets([tmp_path / "out", logs], secrets) == []
    # the scan is real: the same value planted in a saved config is found
    (tmp_path / "out" / "train" / "last" / "notes.json").write_text(json.dumps({"key": KEY}))
    assert find_secrets([tmp_path / "out"], secrets) == [str(tmp_path / "out" / "train" / "last" / "notes.json")]
