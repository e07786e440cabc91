"""Science Exam retrieval context with the real MiniLM embedder and SmolLM2's tokenizer."""

from __future__ import annotations

import pandas as pd
import pytest

from kaggle_kit import jobs
from kaggle_kit.competitions import get
from kaggle_kit.config import PredictConfig, ValidateConfig
from kaggle_kit.embed import load_embedder
from kaggle_kit.errors import ConfigError, InputError
from kaggle_kit.models import demo_model_dir, load_tokenizer
from kaggle_kit.playbooks.retrieval import context_texts, read_passages, retrieve

from ..conftest import DATA


def _passages(tmp_path, df):
    """A passage file made from the data: one fact per question (question + right answer), plus filler."""
    facts = [f"{r['prompt']} The answer: {r[r['answer']]}" for r in df.to_dict("records")]
    filler = ["Bread rises because yeast makes carbon dioxide.", "The Nile flows north into the sea."]
    path = tmp_path / "passages.csv"
    pd.DataFrame({"title": range(len(facts) + 2), "text": filler + facts}).to_csv(path, index=False)
    return path, facts


def test_each_question_retrieves_its_own_passage_within_the_token_budget(tmp_path):
    comp = get("science_exam")
    df = comp.read(DATA / "science_exam" / "train.csv", labelled=True).head(6)
    path, facts = _passages(tmp_path, df)
    passages = read_passages(path)
    hits = retrieve(comp.queries(df), passages, load_embedder("minilm"), k=3, chunk=3)  # chunks merge right
    assert [passages[h[0]] for h in hits] == facts
    tok = load_tokenizer(demo_model_dir())
    for budget in (24, 200):
        ctx = context_texts(tok, passages, hits, budget)
        assert all(0 < len(tok.encode(c, add_special_tokens=False)) <= budget for c in ctx)
    ctx = context_texts(tok, passages, hits, 200)
    prompts = comp.examples(df, tok, 2048, "", context=ctx)
    for prompt, fact, row in zip(prompts, facts, df.to_dict("records")):
        assert prompt.index(fact) < prompt.index("Question: " + row["prompt"])
    views = comp.views(df, tok, 2048, 2, "", context=ctx)
    assert all(fact in p for p, fact in zip(views[0][0], facts))


def test_predict_with_context_writes_a_valid_submission_and_bad_files_fail_first(tmp_path):
    comp = get("science_exam")
    df = comp.read(DATA / "science_exam" / "train.csv", labelled=True).head(4)
    path, _ = _passages(tmp_path, df)
    data = tmp_path / "test.csv"
    df.drop(columns="answer").to_csv(data, index=False)
    out = tmp_path / "sub.csv"
    cfg = PredictConfig("science_exam", str(data), out=str(out), context=str(path), context_k=2, progress=False)
    res = jobs.predict(cfg)
    assert res.predicted == 4 and jobs.validate(ValidateConfig("science_exam", str(out), str(data))) == []
    with pytest.raises(InputError, match="no column 'passage'"):
        jobs.predict(
            PredictConfig("science_exam", str(data), out=str(out), context=str(path), context_column="passage")
        )
    with pytest.raises(ConfigError, match="'context'"):
        jobs.predict(PredictConfig("lmsys", str(DATA / "lmsys" / "test.csv"), out=str(out), context=str(path)))


def test_rehearse_times_the_prompts_the_run_will_build(tmp_path):
    """rehearse builds the prompts predict would: with the retrieved passages, the shots and the chat format
    it is given (it dropped them, and timed bare rows: a retrieval run's time under-predicted)."""
    from kaggle_kit.config import RehearseConfig

    df = get("science_exam").read(DATA / "science_exam" / "train.csv", labelled=True).head(4)
    path, _ = _passages(tmp_path, df)
    data = tmp_path / "test.csv"
    df.drop(columns="answer").to_csv(data, index=False)
    base = dict(rows=100, budget=None, max_length=1024)

    def tokens(**kw) -> float:
        return jobs.rehearse(RehearseConfig("science_exam", str(data), **base, **kw))["mean_tokens"]

    bare = tokens()
    assert tokens(context=str(path), context_k=2) > bare + 20  # each question's fact and its neighbour
    assert tokens(chat_format="plain") != bare  # SmolLM2's chat template's tokens, or none
    # the shots block is the rows' shared head (run once, not a row's tokens); it reaches the prompts' checks
    with pytest.raises(ConfigError, match="shots_file"):
        jobs.rehearse(RehearseConfig("science_exam", str(data), shots=2, **base))
