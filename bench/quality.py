"""Quality of the playbook techniques on real public data: constant vs zero-shot vs each technique.

Science Exam: the 200-question official train.csv from ../shared/data (first --rows), shots from
Radek's extra set (a different file, so no question is its own example). LMSYS: the 100 labelled rows of
../shared/data/lmsys/train_first100.csv; the temperature is fitted on one half and applied to the other
(2-fold), never on the rows it is scored on. Prompt Recovery: rows of the public Gemma-7B rewrite set,
the mean prompt searched on the prompts of other rows, SCS with MiniLM. Everything goes through
`predict` and `score` as a user runs them. Prints a table and writes bench/results/quality_<model>_<competition>.json.

    python bench/quality.py [--rows 100] [--model demo] [--competition science_exam --competition lmsys]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"

from kaggle_kit import jobs  # noqa: E402
from kaggle_kit.competitions import get  # noqa: E402
from kaggle_kit.config import PredictConfig, ScoreConfig  # noqa: E402
from kaggle_kit.metrics import apply_temperature, fit_temperature, log_loss  # noqa: E402
from kaggle_kit.progress import format_table  # noqa: E402

LM_COLS = ["winner_model_a", "winner_model_b", "winner_tie"]


def run(name, comp, data, tmp, model, **kw) -> tuple[Path, float]:
    out = tmp / f"{comp}_{name.replace(' ', '_')}.csv"
    t = time.perf_counter()
    jobs.predict(PredictConfig(comp, str(data), model=model, out=str(out), progress=False, **kw))
    return out, time.perf_counter() - t


def science(rows: int, model: str, tmp: Path) -> list[dict]:
    src = SHARED / "science_exam" / "train.csv"
    src = src if src.exists() else ROOT / "data" / "science_exam" / "train.csv"
    data = tmp / "science_valid.csv"
    pd.read_csv(src, dtype=str, keep_default_na=False).head(rows).to_csv(data, index=False)
    shots = SHARED / "science_exam" / "extra_radek_6000_first3000.csv"
    comp = get("science_exam")
    const = tmp / "science_const.csv"
    comp.fallback(pd.read_csv(data, dtype=str)["id"].tolist()).to_csv(const, index=False)
    table = [{"technique": "constant (A B C)", "file": const, "seconds": 0.0}]
    for name, kw in (
        ("zero-shot", {}),
        ("option-permutation TTA x5", {"tta": 5}),
        ("3-shot, balanced letters", {"shots": 3, "shots_file": str(shots)}),
    ):
        out, secs = run(name, "science_exam", data, tmp, model, **kw)
        table.append({"technique": name, "file": out, "seconds": secs})
    for row in table:
        row["MAP@3"] = jobs.score(ScoreConfig("science_exam", str(row.pop("file")), str(data)))
    return [{"competition": "science_exam", "rows": rows, **r} for r in table]


def _two_fold_temperature(sub: Path, truth: pd.DataFrame) -> tuple[float, list[float]]:
    p = pd.read_csv(sub, dtype=str).set_index("id").loc[truth["id"], LM_COLS].astype(float).to_numpy()
    y = truth[LM_COLS].astype(int).to_numpy().argmax(1)
    half = np.arange(len(y)) % 2 == 0
    out, temps = np.empty_like(p), []
    for fit_on in (half, ~half):
        t = fit_temperature(y[fit_on], p[fit_on])
        out[~fit_on] = apply_temperature(p[~fit_on], t)
        temps.append(t)
    return log_loss(y, out), temps


def lmsys(rows: int, model: str, tmp: Path) -> list[dict]:
    src = SHARED / "lmsys" / "train_first100.csv"
    src = src if src.exists() else ROOT / "data" / "lmsys" / "train.csv"
    data = tmp / "lmsys_valid.csv"
    pd.read_csv(src, dtype=str, keep_default_na=False).head(rows).to_csv(data, index=False)
    truth = get("lmsys").read(data, labelled=True)
    const = tmp / "lmsys_const.csv"
    get("lmsys").fallback(truth["id"].tolist()).to_csv(const, index=False)
    table = [
        {
            "technique": "constant (class prior)",
            "log loss": jobs.score(ScoreConfig("lmsys", str(const), str(data))),
            "seconds": 0.0,
        }
    ]
    for name, kw in (("zero-shot", {}), ("A/B swap TTA x2", {"tta": 2})):
        out, secs = run(name, "lmsys", data, tmp, model, max_length=512, temperature=1.0, **kw)
        table.append(
            {"technique": name, "log loss": jobs.score(ScoreConfig("lmsys", str(out), str(data))), "seconds": secs}
        )
        calibrated, temps = _two_fold_temperature(out, truth)
        table.append(
            {
                "technique": f"{name} + fitted temperature (2-fold: {temps[0]:.2f}, {temps[1]:.2f})",
                "log loss": calibrated,
                "seconds": secs,
            }
        )
    return [{"competition": "lmsys", "rows": len(truth), **r} for r in table]


def prompt_recovery(rows: int, model: str, tmp: Path) -> list[dict]:
    """Zero-shot generation vs the fixed mean prompt vs the searched one (fallback, and appended).

    The mean prompt is searched on the rewrite prompts of rows that are NOT scored; SCS uses MiniLM here
    (Kaggle scored with sentence-t5-base, whose cosines sit much higher).
    """
    from kaggle_kit.competitions.prompt_recovery import MEAN_PROMPT
    from kaggle_kit.embed import scorer
    from kaggle_kit.mean_prompt import optimize, vocabulary
    from kaggle_kit.metrics import scs_texts

    src = SHARED / "prompt_recovery" / "pedromb_gemma7b_kaggle_format.csv"
    df = pd.read_csv(src, dtype=str, keep_default_na=False)
    scored = df.iloc[::7].head(rows // 2)  # spread over the file
    fit = df.drop(scored.index)
    fit = fit[~fit["rewrite_prompt"].isin(set(scored["rewrite_prompt"]))]  # no scored prompt is seen
    data = tmp / "pr_valid.csv"
    scored.to_csv(data, index=False)
    embed = scorer("minilm")
    truth = scored["rewrite_prompt"].tolist()
    t = time.perf_counter()
    unique = list(dict.fromkeys(fit["rewrite_prompt"]))
    found = optimize(unique, embed, vocab=vocabulary(unique, 100), max_words=16, restarts=2, start=MEAN_PROMPT)
    search_s = time.perf_counter() - t
    out, secs = run("zero-shot", "prompt_recovery", data, tmp, model, max_length=768)
    gen = pd.read_csv(out, dtype=str, keep_default_na=False)["rewrite_prompt"].tolist()
    table = [
        ("fixed mean prompt (kit default)", [MEAN_PROMPT] * len(truth), 0.0),
        (f"searched mean prompt ({len(unique)} other prompts): {found.text!r}", [found.text] * len(truth), search_s),
        ("zero-shot generation", gen, secs),
        ("zero-shot + searched mean prompt appended", [f"{g} {found.text}" for g in gen], secs),
    ]
    return [
        {
            "competition": "prompt_recovery",
            "rows": len(truth),
            "technique": name,
            "SCS (MiniLM)": scs_texts(p, truth, embed),
            "seconds": s,
        }
        for name, p, s in table
    ]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--competition", action="append", choices=["science_exam", "lmsys", "prompt_recovery"])
    args = ap.parse_args(argv)
    names = args.competition or ["science_exam", "lmsys", "prompt_recovery"]
    results = []
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            fn = {"science_exam": science, "lmsys": lmsys, "prompt_recovery": prompt_recovery}[name]
            results += fn(args.rows, args.model, Path(d))
    print(format_table(results, ["competition", "rows", "technique", "MAP@3", "log loss", "SCS (MiniLM)", "seconds"]))
    for name in names:
        out = ROOT / "bench" / "results" / f"quality_{Path(args.model).name}_{name}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps([r for r in results if r["competition"] == name], indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
