"""Quality of the playbook techniques on real public data: constant vs zero-shot vs each technique.

Science Exam: the 200-question official train.csv from ../shared/data (first --rows), shots from
Radek's extra set (a different file, so no question is its own example). LMSYS: the 100 labelled rows of
../shared/data/lmsys/train_first100.csv; the temperature is fitted on one half and applied to the other
(2-fold), never on the rows it is scored on. Prompt Recovery: rows of the public Gemma-7B rewrite set,
the mean prompt searched on the prompts of other rows, SCS with MiniLM. The NTU ADL homework (alpaca): perplexity of
the NTU ADL HW3 public-test outputs. QLoRA rows train the configs/<comp>_demo.yaml recipe (8 steps on
this CPU) on rows that are never scored. Everything goes through `predict`, `train`, `score` as a user
runs them. Prints a table and writes bench/results/quality_<model>_<competition>.json.

    python bench/quality.py [--rows 100] [--model demo] [--competition science_exam --competition lmsys]
        [--no-train]   # skip the QLoRA rows (minutes each)
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
from kaggle_kit.config import PredictConfig, ScoreConfig, TrainConfig, load_yaml_config  # noqa: E402
from kaggle_kit.metrics import apply_temperature, fit_temperature, log_loss  # noqa: E402
from kaggle_kit.progress import format_table  # noqa: E402

LM_COLS = ["winner_model_a", "winner_model_b", "winner_tie"]


def run(name, comp, data, tmp, model, **kw) -> tuple[Path, float]:
    out = tmp / f"{comp}_{name.replace(' ', '_')}.csv"
    t = time.perf_counter()
    jobs.predict(PredictConfig(comp, str(data), model=model, out=str(out), progress=False, **kw))
    return out, time.perf_counter() - t


def qlora(comp: str, train_csv, tmp: Path, model: str, **overrides) -> tuple[Path, float, int]:
    """Train configs/<comp>_demo.yaml on `train_csv` (its own grouped valid split); (best adapter, seconds,
    best step). Best step 0 means validation preferred the untrained adapter (the NF4 base alone)."""
    from kaggle_kit.jobs import train

    sets = [f"{k}={v}" for k, v in overrides.items()]
    out = tmp / f"qlora_{comp}_{abs(hash((str(train_csv), tuple(sets)))) % 10**8}"
    cfg = load_yaml_config(
        TrainConfig,
        str(ROOT / "configs" / f"{comp}_demo.yaml"),
        [f"train={train_csv}", f"out={out}", f"model={model}", "progress=false", *sets],
    )
    t = time.perf_counter()
    res = train(cfg)
    return res.best, time.perf_counter() - t, res.best_step


def science(rows: int, model: str, tmp: Path, trained: bool = True) -> list[dict]:
    src = SHARED / "science_exam" / "train.csv"
    src = src if src.exists() else ROOT / "data" / "science_exam" / "train.csv"
    data = tmp / "science_valid.csv"
    pd.read_csv(src, dtype=str, keep_default_na=False).head(rows).to_csv(data, index=False)
    shots = SHARED / "science_exam" / "extra_radek_6000_first3000.csv"
    comp = get("science_exam")
    const = tmp / "science_const.csv"
    comp.fallback(pd.read_csv(data, dtype=str)["id"].tolist()).to_csv(const, index=False)
    table = [{"technique": "constant (A B C)", "file": const, "seconds": 0.0}]
    extra = pd.read_csv(shots, dtype=str, keep_default_na=False)
    facts = tmp / "facts.csv"  # a retrieval corpus of other questions' facts: question + right answer
    pd.DataFrame({"text": [f"{r['prompt']} {r[r['answer']]}" for r in extra.to_dict("records")]}).to_csv(facts)
    techniques = [
        ("zero-shot", {}),
        ("option-permutation TTA x5", {"tta": 5}),
        ("3-shot, balanced letters", {"shots": 3, "shots_file": str(shots)}),
        (f"retrieval context: top-3 of {len(extra)} facts (Radek's set)", {"context": str(facts), "context_k": 3}),
    ]
    if trained:
        train_csv = tmp / "science_train.csv"
        extra.head(400).to_csv(train_csv, index=False)  # never a scored question
        adapter, train_s, best = qlora("science_exam", train_csv, tmp, model)
        table.append(
            {"technique": f"(QLoRA training: 8 steps on 400 of Radek's rows, {train_s:.0f}s; best step {best})"}
        )
        techniques += [
            ("QLoRA adapter", {"adapter": str(adapter)}),
            ("QLoRA adapter + TTA x5", {"adapter": str(adapter), "tta": 5}),
            ("cascade: zero-shot, QLoRA re-answers least confident 40%", {"cascade_adapter": str(adapter)}),
        ]
    for name, kw in techniques:
        out, secs = run(name, "science_exam", data, tmp, model, **kw)
        table.append({"technique": name, "file": out, "seconds": secs})
    for row in table:
        if "file" in row:
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


def _two_fold_qlora(data: Path, tmp: Path, model: str, name: str, tta: int, **overrides) -> tuple[Path, float, list]:
    """Train on one half, predict the other, both ways: predictions for every row, none seen in training."""
    df = pd.read_csv(data, dtype=str, keep_default_na=False)
    parts, secs, bests = [], 0.0, []
    for k in (0, 1):
        fit_rows, score_rows = df.iloc[k::2], df.iloc[1 - k :: 2]
        fit_csv, score_csv = tmp / f"lm_fit{k}.csv", tmp / f"lm_score{k}.csv"  # one adapter per fold and recipe
        fit_rows.to_csv(fit_csv, index=False)
        score_rows.to_csv(score_csv, index=False)
        adapter, t_train, best = qlora("lmsys", fit_csv, tmp, model, **overrides)
        bests.append(best)
        out, t_pred = run(f"{name}_{k}", "lmsys", score_csv, tmp, model, adapter=str(adapter), max_length=512, tta=tta)
        parts.append(pd.read_csv(out, dtype=str))
        secs += t_train + t_pred
    out = tmp / f"lmsys_{name}.csv"
    pd.concat(parts).to_csv(out, index=False)
    return out, secs, bests


def _lmsys_rows(rows: int, tmp: Path) -> tuple[Path, pd.DataFrame, dict]:
    """(the scored LMSYS rows' file, their labels, the constant baseline's table row)."""
    src = SHARED / "lmsys" / "train_first100.csv"
    src = src if src.exists() else ROOT / "data" / "lmsys" / "train.csv"
    data = tmp / "lmsys_valid.csv"
    pd.read_csv(src, dtype=str, keep_default_na=False).head(rows).to_csv(data, index=False)
    truth = get("lmsys").read(data, labelled=True)
    const = tmp / "lmsys_const.csv"
    get("lmsys").fallback(truth["id"].tolist()).to_csv(const, index=False)
    prior = jobs.score(ScoreConfig("lmsys", str(const), str(data)))
    return data, truth, {"technique": "constant (class prior)", "log loss": prior, "seconds": 0.0}


def lmsys(rows: int, model: str, tmp: Path, trained: bool = True) -> list[dict]:
    data, truth, constant = _lmsys_rows(rows, tmp)
    table = [constant]
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
    if trained:
        for name, tta, overrides in (
            ("QLoRA (2-fold: train on one half, score the other)", 1, {}),
            ("QLoRA + A/B swap TTA x2", 2, {}),
            ("QLoRA on paired rows (views=2) + swap TTA", 2, {"views": 2}),
        ):
            out, secs, bests = _two_fold_qlora(
                data, tmp, model, name.split()[0] + str(tta) + str(overrides), tta, **overrides
            )
            table.append(
                {
                    "technique": f"{name}; best steps {bests}",
                    "log loss": jobs.score(ScoreConfig("lmsys", str(out), str(data))),
                    "seconds": secs,
                }
            )
    return [{"competition": "lmsys", "rows": len(truth), **r} for r in table]


def lmsys_ensemble(rows: int, model: str, tmp: Path, trained: bool = True) -> list[dict]:
    """LMSYS, 2-fold on the same 100 rows: (a) an ensemble of the plain and the A/B-swap member with weights
    and temperature fitted on one half (`kaggle-kit ensemble`), predicting the other; (b) QLoRA distilled
    from a teacher's soft labels on the fit half (teacher: the fitted ensemble's probabilities there)."""
    from kaggle_kit.config import EnsembleConfig
    from kaggle_kit.jobs.ensemble import fit as fit_ensemble

    src = SHARED / "lmsys" / "train_first100.csv"
    df = pd.read_csv(src, dtype=str, keep_default_na=False).head(rows)
    ens_parts, dist_parts, secs, weights, bests = [], [], [0.0, 0.0], [], []
    for k in (0, 1):
        fit_rows, score_rows = df.iloc[k::2], df.iloc[1 - k :: 2]
        fit_csv, score_csv = tmp / f"le_fit{k}.csv", tmp / f"le_score{k}.csv"
        fit_rows.to_csv(fit_csv, index=False)
        score_rows.to_csv(score_csv, index=False)
        spec = tmp / f"ens{k}.yaml"
        spec.write_text(f"members:\n  - {{name: plain, model: {model}}}\n  - {{name: swap, model: {model}, tta: 2}}\n")
        t = time.perf_counter()
        fitted = fit_ensemble(
            EnsembleConfig("lmsys", str(spec), str(fit_csv), work=str(tmp / f"ew{k}"), max_length=512)
        )
        weights.append((round(fitted.weights["plain"], 2), round(fitted.temperature, 2)))
        out, t_pred = run(f"ens{k}", "lmsys", score_csv, tmp, model, max_length=512, ensemble=str(spec))
        secs[0] += time.perf_counter() - t
        ens_parts.append(pd.read_csv(out, dtype=str))
        if trained:
            t = time.perf_counter()
            teacher, _ = run(f"teacher{k}", "lmsys", fit_csv, tmp, model, max_length=512, ensemble=str(spec))
            adapter, _, best = qlora("lmsys", fit_csv, tmp, model, soft_labels=str(teacher), loss="answer")
            bests.append(best)
            out, _ = run(f"dist{k}", "lmsys", score_csv, tmp, model, adapter=str(adapter), max_length=512, tta=2)
            secs[1] += time.perf_counter() - t
            dist_parts.append(pd.read_csv(out, dtype=str))
    data = tmp / "le_all.csv"
    df.to_csv(data, index=False)
    table = []
    for name, parts, sec in (
        (
            f"ensemble plain + swap, weights/T fitted on the other half (w_plain, T per fold: {weights})",
            ens_parts,
            secs[0],
        ),
        (f"QLoRA distilled from that ensemble's soft labels + swap TTA; best steps {bests}", dist_parts, secs[1]),
    ):
        if not parts:
            continue
        out = tmp / f"le_{len(table)}.csv"
        pd.concat(parts).to_csv(out, index=False)
        table.append(
            {"technique": name, "log loss": jobs.score(ScoreConfig("lmsys", str(out), str(data))), "seconds": sec}
        )
    return [{"competition": "lmsys", "rows": len(df), **r} for r in table]


def lmsys_two_models(rows: int, model: str, tmp: Path, trained: bool = False) -> list[dict]:
    """LMSYS, 2-fold on the same 100 rows, two architectures: `model` (SmolLM2 by default) and Gemma-3-270M,
    each with the A/B swap TTA; their ensemble with weights and temperature fitted on one half
    (`kaggle-kit ensemble`), predicting the other; and a cascade where Gemma-3-270M re-answers `model`'s
    least confident 40% (`--cascade-model`). Nothing is trained (`trained` is ignored)."""
    from kaggle_kit.config import EnsembleConfig
    from kaggle_kit.jobs.ensemble import fit as fit_ensemble

    second = "demo:gemma3"
    df = pd.read_csv(SHARED / "lmsys" / "train_first100.csv", dtype=str, keep_default_na=False).head(rows)
    names = [f"{model} + swap TTA", f"{second} + swap TTA", "ensemble of both", "cascade"]
    parts, secs, fitted_at = {n: [] for n in names}, dict.fromkeys(names, 0.0), []
    for k in (0, 1):
        fit_csv, score_csv = tmp / f"tm_fit{k}.csv", tmp / f"tm_score{k}.csv"
        df.iloc[k::2].to_csv(fit_csv, index=False)
        df.iloc[1 - k :: 2].to_csv(score_csv, index=False)
        spec = tmp / f"tm{k}.yaml"
        members = [f"  - {{name: a, model: {model}, tta: 2}}", f"  - {{name: b, model: {second}, tta: 2}}"]
        spec.write_text("members:\n" + "\n".join(members) + "\n")
        t = time.perf_counter()
        fitted = fit_ensemble(
            EnsembleConfig("lmsys", str(spec), str(fit_csv), work=str(tmp / f"tw{k}"), max_length=512)
        )
        fit_s = time.perf_counter() - t
        fitted_at.append((round(fitted.weights["a"], 2), round(fitted.temperature, 2)))
        runs = (
            (names[0], {"model": model, "tta": 2}),
            (names[1], {"model": second, "tta": 2}),
            (names[2], {"ensemble": str(spec)}),
            (names[3], {"model": model, "tta": 2, "cascade_model": second, "cascade_fraction": 0.4}),
        )
        for name, kw in runs:
            chosen = kw.pop("model", model)
            out, sec = run(f"tm{k}_{names.index(name)}", "lmsys", score_csv, tmp, chosen, max_length=512, **kw)
            secs[name] += sec + (fit_s if name == names[2] else 0.0)
            parts[name].append(pd.read_csv(out, dtype=str))
    data = tmp / "tm_all.csv"
    df.to_csv(data, index=False)
    table = []
    for name in names:
        out = tmp / f"tm_{names.index(name)}.csv"
        pd.concat(parts[name]).to_csv(out, index=False)
        label = f"{name} (w_{model}, T per fold: {fitted_at})" if name == names[2] else name
        if name == names[3]:
            label = f"cascade: {model} + swap, {second} re-answers the least confident 40%"
        score = jobs.score(ScoreConfig("lmsys", str(out), str(data)))
        table.append({"technique": label, "log loss": score, "seconds": secs[name]})
    return [{"competition": "lmsys", "rows": len(df), **r} for r in table]


def prompt_recovery(rows: int, model: str, tmp: Path, trained: bool = True) -> list[dict]:
    """Zero-shot generation vs the fixed mean prompt vs the searched one (fallback, and appended).

    The mean prompt is searched on the rewrite prompts of rows that are NOT scored; SCS uses MiniLM here
    (Kaggle scored with sentence-t5-base, whose cosines sit much higher).
    """
    from kaggle_kit.competitions import get

    MEAN_PROMPT = get("prompt_recovery").mean_text
    from kaggle_kit.embed import scorer
    from kaggle_kit.metrics import scs_texts
    from kaggle_kit.playbooks.mean_prompt import optimize, vocabulary

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
    if trained:
        from kaggle_kit.config import SynthConfig
        from kaggle_kit.playbooks.synth import synthesize

        real = tmp / "pr_train_real.csv"
        fit.head(200).to_csv(real, index=False)
        prompts = tmp / "pr_prompts.txt"
        prompts.write_text("\n".join(unique) + "\n")
        synth = synthesize(
            SynthConfig(
                str(real),
                str(prompts),
                str(tmp / "pr_train_synth.csv"),
                model=model,
                rows=64,
                max_new_tokens=96,
                progress=False,
            )
        )
        for name, train_csv, extra_s in (
            ("QLoRA on 200 real Gemma rewrites (other rows)", real, 0.0),
            (f"QLoRA on {synth.rows} synthetic rewrites by the demo model", synth.out, synth.seconds),
        ):
            adapter, t_train, _ = qlora("prompt_recovery", train_csv, tmp, model)
            out, t_pred = run(name[:12], "prompt_recovery", data, tmp, model, adapter=str(adapter), max_length=768)
            pred = pd.read_csv(out, dtype=str, keep_default_na=False)["rewrite_prompt"].tolist()
            table.append((name, pred, extra_s + t_train + t_pred))
            table.append((name + " + searched mean prompt appended", [f"{g} {found.text}" for g in pred], 0.0))
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


def alpaca(rows: int, model: str, tmp: Path, trained: bool = True) -> list[dict]:
    """The NTU ADL homework: perplexity of the public-test outputs; zero-shot, 3-shot (random / balanced over the
    translation direction), and the QLoRA demo recipe. Shots and training use train records only."""
    from kaggle_kit.config import PerplexityConfig
    from kaggle_kit.playbooks.instruct import evaluate

    src = SHARED / "ntu_adl_hw3"
    test = json.loads((src / "public_test.json").read_text(encoding="utf-8"))
    data = tmp / "alpaca_test.json"
    data.write_text(json.dumps(test[: rows // 2], ensure_ascii=False))
    train_recs = json.loads((src / "train_first3000.json").read_text(encoding="utf-8"))
    for r in train_recs:  # the category the NTU ADL homework balanced: which way the translation goes
        r["direction"] = "to_modern" if ("現代" in r["instruction"] or "白話" in r["instruction"]) else "to_classical"
    shots = tmp / "alpaca_train.json"
    shots.write_text(json.dumps(train_recs, ensure_ascii=False))
    runs = [
        ("zero-shot", {}),
        ("3-shot, random", {"shots": 3, "shots_file": str(shots)}),
        ("3-shot, balanced over direction", {"shots": 3, "shots_file": str(shots), "shots_category": "direction"}),
    ]
    table = []
    if trained:
        train_json = tmp / "alpaca_fit.json"
        train_json.write_text(json.dumps(train_recs[:400], ensure_ascii=False))
        valid_json = tmp / "alpaca_valid.json"
        valid_json.write_text(json.dumps(test[rows // 2 : rows // 2 + 40], ensure_ascii=False))  # never scored
        adapter, train_s, best = qlora("alpaca", train_json, tmp, model, valid=str(valid_json))
        table.append({"technique": f"(QLoRA training: 6 steps on 400 train records, {train_s:.0f}s; best step {best})"})
        runs.append(("QLoRA adapter (the NTU ADL homework recipe, demo size)", {"adapter": str(adapter)}))
    for name, kw in runs:
        t = time.perf_counter()
        res = evaluate(PerplexityConfig(str(data), model=model, max_length=512, progress=False, **kw))
        table.append({"technique": name, "perplexity": res.perplexity, "seconds": time.perf_counter() - t})
    return [{"competition": "alpaca (the NTU ADL homework)", "rows": rows // 2, **r} for r in table]


def lmsys_heads(rows: int, model: str, tmp: Path, trained: bool = True) -> list[dict]:
    """Label-token scoring vs a sequence-classification head (`head: classifier`, LoRA + a linear head on
    the last token, what many LMSYS solutions trained), the same demo recipe otherwise, 2-fold, with and
    without the A/B swap view."""
    data, truth, constant = _lmsys_rows(rows, tmp)
    table = [constant]
    for head in ("tokens", "classifier") if trained else ():
        for tta in (1, 2):
            name = f"QLoRA, head: {head}" + (" + A/B swap TTA x2" if tta == 2 else "")
            out, secs, bests = _two_fold_qlora(data, tmp, model, f"head_{head}{tta}", tta, head=head)
            score = jobs.score(ScoreConfig("lmsys", str(out), str(data)))
            table.append({"technique": f"{name}; best steps {bests}", "log loss": score, "seconds": secs})
    return [{"competition": "lmsys", "rows": len(truth), **r} for r in table]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--competition", action="append", choices=list(SECTIONS))
    ap.add_argument("--no-train", action="store_true", help="skip the QLoRA rows")
    args = ap.parse_args(argv)
    names = args.competition or list(SECTIONS)
    cols = ["competition", "rows", "technique", "MAP@3", "log loss", "SCS (MiniLM)", "perplexity", "seconds"]
    results = []
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            part = SECTIONS[name](args.rows, args.model, Path(d), not args.no_train)
            print(format_table(part, cols), flush=True)
            out = ROOT / "bench" / "results" / f"quality_{Path(args.model).name}_{name}.json"
            out.parent.mkdir(exist_ok=True)
            out.write_text(json.dumps(part, indent=2))
            print(f"wrote {out}", flush=True)
            results += part
    print(format_table(results, cols))


SECTIONS = {
    "science_exam": science,
    "lmsys": lmsys,
    "lmsys_ensemble": lmsys_ensemble,
    "lmsys_heads": lmsys_heads,
    "lmsys_two_models": lmsys_two_models,
    "prompt_recovery": prompt_recovery,
    "alpaca": alpaca,
}


if __name__ == "__main__":
    main()
