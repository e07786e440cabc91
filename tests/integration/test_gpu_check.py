"""bench/gpu_check.sh, the first GPU session's check, runs its CPU steps to the end (--dry-run)."""

import json
import subprocess

from ..conftest import ROOT


def test_gpu_check_dry_run_passes_every_cpu_step(tmp_path):
    r = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    steps = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert {"versions", "exactness", "fp16_overflow", "train_resume", "t4_memory_estimate"} <= set(steps)
    assert steps["fp16_overflow"]["result"]["planted_overflow"].startswith("NonFiniteOutput")
    assert steps["train_resume"]["result"]["equal"] is True
    assert all(r["fast"]["nan_rows"] == 0 for r in steps["exactness"]["result"].values())
