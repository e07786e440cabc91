"""bench/gpu_check.sh, the first GPU session's check, runs its CPU steps to the end (--dry-run)."""

import json
import subprocess

from ..conftest import ROOT


def test_gpu_check_dry_run_passes_every_cpu_step(tmp_path):
    only = [
        "versions",
        "loads",
        "gemma2_attention",
        "fp16_overflow",
        "perplexity_memory",
        "train_resume",
        "shared_head",
        "t4_memory_estimate",
        "benches",
    ]
    args = [x for step in only for x in ("--only", step)]  # the exactness step repeats test_families.py
    r = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path), *args],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    steps = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert set(only) == set(steps)
    assert steps["fp16_overflow"]["result"]["planted_overflow"].startswith("NonFiniteOutput")
    assert steps["train_resume"]["result"]["equal"] is True
    assert all(r["packed_ran"] and r["check_kept_it_on"] for r in steps["shared_head"]["result"].values())
    assert steps["gemma2_attention"]["result"]["kit_chooses"] == "eager"
    benches = steps["benches"]["result"]  # both benches ran on the tiny Llama and wrote their JSON
    assert {"run", "rows/s", "vs best peer"} <= set(benches["infer"][0])
    assert [r["run"] for r in benches["train"]][0] == "kit fit()"
    assert sorted(p.name for p in (tmp_path / "bench_results").iterdir()) == [
        "infer_cpu_llama.json",
        "train_cpu_llama_answer.json",
    ]
