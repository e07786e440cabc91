"""Quality of the competitions defined as specs (Eedi, LLM-Detect, AIMO) on real public data: constant
baseline vs zero-shot vs the recipe, every row through `predict` / `train` / `score` / `synth` as a user
runs them, scored on rows the recipe never saw. Prints a table and writes
bench/results/quality_<model>_<competition>.json with the command, the commit and the machine.

    python bench/quality_specs.py [--competition eedi --competition llm_detect --competition aimo]
        [--model demo] [--no-train]

LLM-Detect: the official train set has 3 generated essays in 1,378, so positives are generated with
`kaggle-kit synth --kind essays` from train_prompts.csv (the demo model writing to the two assignments);
a QLoRA classifier trains on 60 human + 40 generated essays and is scored (ROC AUC) on 60 other human
essays, 20 other generated ones and the 3 real generated essays. Eedi: MAP@25 on the wrong answers of
questions the reranker never trained on. AIMO: accuracy on AIMO1's train and AIMO2's reference problems.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
SPECS = ROOT / "kaggle_kit" / "competitions" / "specs"

from meta import commit, machine  # noqa: E402

from kaggle_kit import jobs  # noqa: E402
from kaggle_kit.config import PredictConfig, ScoreConfig, SynthConfig, TrainConfig  # noqa: E402
from kaggle_kit.progress import format_table  # noqa: E402


def variant(name: str, tmp: Path, block: dict) -> str:
    """A copy of a shipped spec (and its prepare.py) with some task settings changed, as a user would write."""
    folder = tmp / f"{name}_{abs(hash(json.dumps(block, sort_keys=True))) % 10**6}"
    shutil.copytree(SPECS / name, folder, dirs_exist_ok=True)
    spec = yaml.safe_load((folder / "competition.yaml").read_text())
    spec[spec["task"]].update(block)
    (folder / "competition.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return str(folder / "competition.yaml")


def scored(comp: str, data: Path, tmp: Path, model: str, label: str, **kw) -> dict:
    out = tmp / f"{label.replace(' ', '_')}.csv"
    t = time.perf_counter()
    jobs.predict(PredictConfig(comp, str(data), model=model, out=str(out), progress=False, **kw))
    secs = time.perf_counter() - t
    return {"technique": label, "score": jobs.score(ScoreConfig(comp, str(out), str(data))), "seconds": secs}


def train(comp: str, data: Path, tmp: Path, model: str, **kw):
    t = time.perf_counter()
    cfg = dict(competition=comp, train=str(data), model=model, out=str(tmp / f"train_{Path(comp).stem}"),
               lora_r=8, lora_alpha=16, lora_dropout=0.0, lr=1e-3, scheduler="constant", warmup_ratio=0.0,
               batch_size=4, grad_accum=1, eval_metric=False, progress=False, valid_fraction=0.2)  # fmt: skip
    res = jobs.train(TrainConfig(**{**cfg, **kw}))
    return res.best, time.perf_counter() - t


def eedi(model: str, tmp: Path, trained: bool) -> list[dict]:
    """40 questions scored (their tagged wrong answers), the next 80 for the reranker's training."""
    src = pd.read_csv(SHARED / "eedi" / "train.csv", dtype=str, keep_default_na=False)
    folder = tmp / "eedi"
    folder.mkdir()
    shutil.copy(SHARED / "eedi" / "misconception_mapping.csv", folder)
    src.head(40).to_csv(folder / "valid.csv", index=False)
    src.iloc[40:120].to_csv(folder / "fit.csv", index=False)
    data = folder / "valid.csv"
    const = tmp / "eedi_const.csv"
    from kaggle_kit.competitions import get

    comp = get("eedi")
    truth = comp.read(data, labelled=True)
    comp.fallback(truth[comp.id_column].tolist(), truth).to_csv(const, index=False)
    table = [{"technique": "constant (the sample submission's ids)",
              "score": jobs.score(ScoreConfig("eedi", str(const), str(data))), "seconds": 0.0}]  # fmt: skip
    table.append(scored(variant("eedi", tmp, {"rerank": 0}), data, tmp, model, "retrieval only (MiniLM, 25 of 2,587)"))
    table.append(scored("eedi", data, tmp, model, "retrieval + LLM rerank of the first 8 (zero-shot)"))
    if trained:
        adapter, secs = train("eedi", folder / "fit.csv", tmp, model, loss="answer", max_steps=24, eval_every=24,
                              max_length=384, quant="none")  # fmt: skip
        table.append({"technique": f"(LoRA reranker: 24 steps on 80 other questions' pairs, {secs:.0f}s)"})
        table.append(scored("eedi", data, tmp, model, "retrieval + rerank by the trained LoRA", adapter=str(adapter)))
    return [{"competition": "eedi", "rows": len(truth), "metric": "MAP@25", **r} for r in table]


def llm_detect(model: str, tmp: Path, trained: bool) -> list[dict]:
    human = pd.read_csv(SHARED / "llm_detect" / "train_essays.csv", dtype=str, keep_default_na=False)
    real_gen = pd.read_csv(SHARED / "llm_detect" / "train_essays_generated_rows.csv", dtype=str, keep_default_na=False)
    synth = tmp / "synth_essays.csv"
    t = time.perf_counter()
    from kaggle_kit.playbooks.synth import synthesize

    synthesize(SynthConfig(None, str(SHARED / "llm_detect" / "train_prompts.csv"), out=str(synth), kind="essays",
                           model=model, per_text=30, max_new_tokens=320, progress=False))  # fmt: skip
    synth_s = time.perf_counter() - t
    gen = pd.read_csv(synth, dtype=str, keep_default_na=False)
    fit = pd.concat([human.head(60), gen.iloc[:40]]).sample(frac=1.0, random_state=0)
    valid = pd.concat([human.iloc[60:120], gen.iloc[40:60], real_gen])
    fit.to_csv(tmp / "detect_fit.csv", index=False)
    valid.to_csv(tmp / "detect_valid.csv", index=False)
    data = tmp / "detect_valid.csv"
    table = [{"technique": "constant (0.5 for every essay)", "score": 0.5, "seconds": 0.0},
             {"technique": f"(synth: {len(gen)} essays by the demo model to 2 prompts, {synth_s:.0f}s)"}]  # fmt: skip
    table.append(scored("llm_detect", data, tmp, model, "zero-shot: p(Yes) to 'written by an AI?'", max_length=1024))
    if trained:
        adapter, secs = train("llm_detect", tmp / "detect_fit.csv", tmp, model, loss="answer", max_steps=30,
                              eval_every=30, max_length=768, quant="nf4")  # fmt: skip
        table.append({"technique": f"(QLoRA classifier: 30 steps on 60 human + 40 generated essays, {secs:.0f}s)"})
        table.append(scored("llm_detect", data, tmp, model, "QLoRA classifier", adapter=str(adapter), max_length=1024))
    return [{"competition": "llm_detect", "rows": len(valid), "metric": "ROC AUC", **r} for r in table]


def aimo(model: str, tmp: Path, trained: bool) -> list[dict]:
    data = tmp / "aimo.csv"
    parts = [SHARED / "aimo" / "aimo1" / "train.csv", SHARED / "aimo" / "aimo2" / "reference.csv"]
    pd.concat([pd.read_csv(p, dtype=str) for p in parts]).to_csv(data, index=False)
    const = tmp / "aimo_const.csv"
    df = pd.read_csv(data, dtype=str)
    pd.DataFrame({"row_id": [""] * len(df), "id": df["id"], "answer": "0"}).to_csv(const, index=False)
    const_score = jobs.score(ScoreConfig("aimo", str(const), str(data)))
    table = [{"technique": "constant (0)", "score": const_score, "seconds": 0.0}]
    greedy = variant("aimo", tmp, {"samples": 1})
    table.append(scored(greedy, data, tmp, model, "greedy, one solution", max_new_tokens=256))
    table.append(scored("aimo", data, tmp, model, "4 sampled solutions, majority vote", max_new_tokens=256))
    return [{"competition": "aimo", "rows": len(df), "metric": "accuracy", **r} for r in table]


SECTIONS = {"eedi": eedi, "llm_detect": llm_detect, "aimo": aimo}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--competition", action="append", choices=list(SECTIONS))
    ap.add_argument("--no-train", action="store_true")
    args = ap.parse_args(argv)
    meta = {"command": " ".join(["python", "bench/quality_specs.py", *(argv or sys.argv[1:])]),
            "commit": commit(), "machine": machine(), "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    cols = ["competition", "rows", "technique", "metric", "score", "seconds"]
    with tempfile.TemporaryDirectory() as d:
        for name in args.competition or list(SECTIONS):
            part = SECTIONS[name](args.model, Path(d), not args.no_train)
            print(format_table(part, cols), flush=True)
            out = ROOT / "bench" / "results" / f"quality_{Path(args.model).name}_{name}.json"
            out.write_text(json.dumps({**meta, "rows": part}, indent=2))
            print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
