"""The three competitions that were Python modules are spec files now, and compute exactly what they did.

tests/data/before_specs/ was written by the last module version (commit 2e0960b): model_inputs.json holds
a hash of every model input it made on data/ (prompts at two max_lengths, every TTA view and its label
order, shots, retrieval context, queries), the fallback and the submission it built from fixed outputs,
targets and completions; <competition>.csv is its fp32 submission for data/<competition>/train.csv.
The same inputs and the same submission building give the same submission bytes.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from kaggle_kit import PredictConfig, predict
from kaggle_kit.competitions import get

from ..conftest import DATA, ROOT

BEFORE = ROOT / "tests" / "data" / "before_specs"


def _h(texts):
    return [hashlib.sha256(t.encode()).hexdigest()[:16] for t in texts]


def model_inputs(tok) -> dict:
    """What the old dump recorded, recomputed by the spec-based competitions."""
    out = {}
    for name in ("science_exam", "lmsys", "prompt_recovery"):
        comp = get(name)
        for split in ("train", "test"):
            df = comp.read(DATA / name / f"{split}.csv", labelled=split == "train")
            for ml in (2048, 512):
                out[f"{name}/{split}/{ml}"] = _h(comp.examples(df, tok, ml))
            if comp.views is not None:
                for n in range(2, comp.max_views + 1):
                    out[f"{name}/{split}/views{n}"] = [[_h(p), perm] for p, perm in comp.views(df, tok, 2048, n)]
            if comp.queries is not None:
                out[f"{name}/{split}/queries"] = _h(comp.queries(df))
                ctx = [f"passage {i} {{braces}}" for i in range(len(df))]
                out[f"{name}/{split}/context"] = _h(comp.examples(df, tok, 2048, "", context=ctx))
            ids = df[comp.id_column].tolist()
            out[f"{name}/{split}/fallback"] = comp.fallback(ids).to_csv(index=False)
            rng = np.random.default_rng(0)
            if comp.task == "choices":
                p = rng.random((len(df), len(comp.labels)))
                p[1] = np.nan
                out[f"{name}/{split}/submission"] = comp.to_submission(df, p).to_csv(index=False)
            else:
                texts = [f'Instruction: "rewrite {i}"' if i % 3 else None for i in range(len(df))]
                out[f"{name}/{split}/submission"] = comp.to_submission(df, texts).to_csv(index=False)
        train = comp.read(DATA / name / "train.csv", labelled=True)
        if name == "science_exam":
            block = comp.shots(train, 5, exclude=train["id"].head(10).tolist())
            out["science_exam/shots"] = hashlib.sha256(block.encode()).hexdigest()
            out["science_exam/with_shots"] = _h(comp.examples(train, tok, 2048, block))
            out["targets"] = comp.targets(train).tolist()
        if name == "lmsys":
            out["targets/lmsys"] = comp.targets(train).tolist()
        out[f"completions/{name}"] = comp.completions(train)
    return out


def test_every_model_input_and_submission_is_what_the_modules_made(demo_model_fp32):
    _, tok = demo_model_fp32
    before = json.loads((BEFORE / "model_inputs.json").read_text())
    now = model_inputs(tok)
    assert set(now) == set(before)
    for key, old in before.items():
        if "/views" in key:  # one label order for all rows then, one per row now (all equal here)
            for (old_prompts, old_perm), (prompts, perm) in zip(old, now[key]):
                assert prompts == old_prompts, key
                assert perm == old_perm or all(p == old_perm for p in perm), key
        else:
            assert now[key] == old, key


@pytest.mark.parametrize("name,rows", [("science_exam", 40), ("prompt_recovery", 12), ("lmsys", 12)])
def test_fp32_submissions_on_data_are_the_modules(name, rows, tmp_path):
    """The whole Science Exam file; the first rows of the two slower ones (their rows' batches then
    differ from the full run's, which fp32 leaves in the last bits of LMSYS's probabilities only)."""
    data = tmp_path / "rows.csv"
    pd.read_csv(DATA / name / "train.csv", dtype=str, keep_default_na=False).head(rows).to_csv(data, index=False)
    out = tmp_path / f"{name}.csv"
    predict(PredictConfig(name, str(data), out=str(out), dtype="float32", progress=False))
    before = (BEFORE / f"{name}.csv").read_text().splitlines(keepends=True)
    if name == "lmsys":  # 17-digit probabilities
        a, b = pd.read_csv(out), pd.read_csv(BEFORE / f"{name}.csv").head(rows)
        assert a["id"].tolist() == b["id"].tolist()
        np.testing.assert_allclose(a.iloc[:, 1:].to_numpy(), b.iloc[:, 1:].to_numpy(), rtol=0, atol=1e-5)
    else:
        assert out.read_text() == "".join(before[: rows + 1])
