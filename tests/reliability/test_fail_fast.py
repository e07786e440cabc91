"""A bad test.csv fails before the model loads: in milliseconds, with no torch imported, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ..conftest import run_kit, write_subset

PROBE = """
import json, sys, time
import pandas  # imported before timing: a notebook has it already
from kaggle_kit import jobs
from kaggle_kit.config import PredictConfig
from kaggle_kit.errors import InputError
t = time.perf_counter()
try:
    jobs.predict(PredictConfig(sys.argv[1], sys.argv[2], out=sys.argv[3], budget="9h"))
    err = None
except InputError as exc:
    err = str(exc)
print(json.dumps({"error": err, "seconds": time.perf_counter() - t,
                  "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}))
"""


@pytest.mark.parametrize(
    "comp, column, bad",
    [("science_exam", "prompt", ""), ("lmsys", "response_b", "not json"), ("prompt_recovery", "rewritten_text", " ")],
)
def test_bad_cell_deep_in_the_file_fails_before_any_model_code(tmp_path, comp, column, bad):
    import pandas as pd

    path = write_subset(comp, tmp_path, 2000)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.loc[1733, column] = bad  # row 1734 of 2000: the reader checks every cell before anything else
    df.to_csv(path, index=False)
    out = tmp_path / "submission.csv"
    res = subprocess.run([sys.executable, "-c", PROBE, comp, str(path), str(out)], capture_output=True, text=True)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["error"] and f"row 1734, column '{column}'" in got["error"] and str(path) in got["error"]
    assert not got["torch"] and not got["transformers"]  # no model code ran
    assert got["seconds"] < 1.0, got  # the promise: under a second, not after an hour
    assert not out.exists()  # nothing half-made


def test_cli_bad_file_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "test.csv"
    path.write_text("id,prompt,A,B,C,D\n0,q,a,b,c,d\n")
    res = run_kit("predict", "science_exam", "--data", path, "--out", tmp_path / "s.csv")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0, res.stderr  # one line, no traceback
    assert res.stderr.startswith("error: ") and "column 'E'" in res.stderr and "Traceback" not in res.stderr


def test_a_model_that_needs_a_missing_package_is_a_clear_error_and_leaves_the_fallback(tmp_path):
    """AWQ weights (Kaggle's 14B-32B uploads) need gptqmodel, which this environment lacks: transformers
    raises ImportError before it reads a weight. The CLI names the model and the package in one line,
    exits 2, and the fallback submission is already written (nothing lost)."""
    import pandas as pd

    from .. import tiny_models

    folder = tiny_models.save("llama", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm"}
    (folder / "config.json").write_text(json.dumps(config))
    rows = write_subset("science_exam", tmp_path, 5)
    res = run_kit("predict", "science_exam", "--data", rows, "--model", folder, "--out", tmp_path / "s.csv")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    line = next(x for x in res.stderr.splitlines() if x.startswith("error: "))
    assert f"'model': {folder}" in line and "gptqmodel" in line
    assert len(pd.read_csv(tmp_path / "s.csv")) == 5
