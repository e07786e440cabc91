"""The package imports without torch; the CLI gives one-line errors (exit 2) for user mistakes."""

import subprocess
import sys

import pytest

from kaggle_kit.cli import COMMANDS, main

from ..conftest import DATA


def test_import_does_not_load_torch():
    code = "import sys, kaggle_kit, kaggle_kit.cli; kaggle_kit.__all__; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_public_names_resolve():
    import kaggle_kit

    for name in kaggle_kit.__all__:
        assert getattr(kaggle_kit, name) is not None


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "kaggle_kit", *args], capture_output=True, text=True)


def test_unknown_competition_is_one_line_exit_2():
    r = run_cli("predict", "titanic", "--data", str(DATA / "science_exam" / "test.csv"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: unknown competition 'titanic'; valid: science_exam, lmsys, prompt_recovery, eedi, llm_detect, "
        "aimo, wsdm, map, alpaca, or the path of a spec file"
    ]
    assert "Traceback" not in r.stderr


def test_bad_test_file_fails_before_model_load(tmp_path):
    bad = tmp_path / "test.csv"
    bad.write_text("id,prompt,A,B,C,D\n1,q,a,b,c,d\n")
    r = run_cli("predict", "science_exam", "--data", str(bad), "--out", str(tmp_path / "s.csv"))
    assert r.returncode == 2 and "column 'E'" in r.stderr and str(bad) in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "s.csv").exists()


def test_missing_model_lists_available(tmp_path):
    r = run_cli(
        "predict",
        "science_exam",
        "--data",
        str(DATA / "science_exam" / "test.csv"),
        "--model",
        str(tmp_path / "no-such-model"),
        "--out",
        str(tmp_path / "s.csv"),
        "--no-progress",
    )
    assert r.returncode == 2
    assert "no-such-model' not found" in r.stderr and "Available: demo" in r.stderr
    # the fallback submission written before the model load is still there and complete
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "id,prediction" and len(lines) == 41


def test_validate_lists_missing_ids(tmp_path):
    sub = tmp_path / "s.csv"
    sub.write_text("id,prediction\n0,A B C\n1,B\n")
    r = run_cli("validate", "science_exam", str(sub), "--test", str(DATA / "science_exam" / "test.csv"))
    assert r.returncode == 1
    assert "38 test ids missing: ['10', '11'," in r.stdout and "INVALID" in r.stdout


def test_validate_and_score_good_files():
    r = run_cli(
        "validate",
        "science_exam",
        str(DATA / "science_exam" / "sample_submission.csv"),
        "--test",
        str(DATA / "science_exam" / "test.csv"),
    )
    assert r.returncode == 0 and r.stdout.strip() == "valid"
    r = run_cli(
        "score",
        "science_exam",
        "--submission",
        str(DATA / "science_exam" / "sample_submission.csv"),
        "--truth",
        str(DATA / "science_exam" / "train.csv"),
    )
    assert r.returncode == 0 and r.stdout.startswith("MAP@3: 0.")


def test_bad_budget_names_the_field():
    r = run_cli("predict", "lmsys", "--data", str(DATA / "lmsys" / "test.csv"), "--budget", "soon")
    assert r.returncode == 2 and "config field 'budget'" in r.stderr


def test_env_reports_versions_device_and_demo_models():
    r = run_cli("env", "--json")
    assert r.returncode == 0, r.stderr
    import json

    info = json.loads(r.stdout)
    assert info["packages"]["transformers"].startswith("5.")
    assert info["device"]["profile"].startswith("cpu ")
    assert [line.split(":")[0] for line in info["models"]["demo"]] == ["demo", "demo"]  # 'demo', 'demo:gemma3'
    text = run_cli("env").stdout
    assert "kaggle-kit: " in text and "profile: cpu" in text


def test_loss_curve_leaves_pyplot_alone(tmp_path):
    code = (
        "import sys; from kaggle_kit.progress import loss_curve; "
        f"loss_curve([{{'step': 1, 'train_loss': 2.0}}, {{'step': 2, 'eval_loss': 1.5}}], {str(tmp_path / 'c.png')!r});"
        " assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_bitsandbytes_cpu_kernel_warning_is_not_printed():
    code = "import kaggle_kit, peft, bitsandbytes"  # bitsandbytes warns at import about the hub-only kernel
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "kernels-community" not in r.stderr
