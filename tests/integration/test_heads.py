"""Sequence-classification heads (`head: classifier`) on the real SmolLM2: trained with LoRA on LMSYS rows,
saved as peft saves a classification adapter, and scored by the kit's engine (batched, prefix cache, A/B
swap view) exactly as plain transformers' AutoModelForSequenceClassification + peft score it, one row at a
time in fp32 with eager attention."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from kaggle_kit import competitions
from kaggle_kit.config import TrainConfig
from kaggle_kit.errors import ConfigError
from kaggle_kit.hardware import detect
from kaggle_kit.infer import run_task
from kaggle_kit.infer.engine import encode
from kaggle_kit.infer.primitives import choice_task, generation_task
from kaggle_kit.jobs import train
from kaggle_kit.models import demo_model_dir, load_model

from ..conftest import DATA, native_bf16
from .test_train import small

MAX_LENGTH = 256


@pytest.fixture(scope="module")
def classifier_adapter(tmp_path_factory):
    out = tmp_path_factory.mktemp("classifier")
    lmsys = dict(competition="lmsys", train=str(DATA / "lmsys" / "train.csv"), valid=None, eval_every=3)
    cfg = small(out, **lmsys, head="classifier", loss="answer", quant="none", dtype="float32", max_length=MAX_LENGTH)
    res = train(cfg)
    assert [h["step"] for h in res.history if "train_loss" in h] == [1, 2, 3]
    return out / "run" / "last"


def test_classifier_adapter_is_what_peft_saves_for_sequence_classification(classifier_adapter):
    from safetensors.torch import load_file

    cfg = json.loads((classifier_adapter / "adapter_config.json").read_text())
    assert cfg["task_type"] == "SEQ_CLS" and cfg["modules_to_save"] == ["score"]
    tensors = load_file(classifier_adapter / "adapter_model.safetensors")
    score = tensors["base_model.model.score.weight"]
    kit, tok = load_model("demo", detect("float32", "cpu"))
    ids = [tok(x, add_special_tokens=False)["input_ids"][0] for x in competitions.get("lmsys").labels]
    start = kit.get_output_embeddings().weight[ids]  # the head starts as the label tokens' output rows
    assert score.shape == start.shape and not torch.allclose(score, start)  # and training moved it


def test_classifier_scores_as_plain_transformers_sequence_classification(classifier_adapter):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    comp = competitions.get("lmsys")
    df = comp.read(DATA / "lmsys" / "test.csv").head(6)
    kit, tok = load_model("demo", detect("float32", "cpu"), adapter=str(classifier_adapter))
    prompts = comp.examples(df, tok, MAX_LENGTH)
    views = comp.views(df, tok, MAX_LENGTH, 2)
    task = choice_task(kit, tok, prompts, list(comp.labels), max_length=MAX_LENGTH, views=views)
    got, _ = run_task(task, kit, batch_tokens=3 * MAX_LENGTH, progress=False)

    plain = AutoModelForSequenceClassification.from_pretrained(
        demo_model_dir(), num_labels=3, dtype=torch.float32, attn_implementation="eager"
    )
    plain.config.pad_token_id = tok.pad_token_id
    plain = PeftModel.from_pretrained(plain, classifier_adapter).eval()

    def one_by_one(texts):
        out = []
        for row in encode(tok, texts, MAX_LENGTH):
            with torch.inference_mode():
                out.append(torch.softmax(plain(input_ids=torch.tensor([row])).logits[0].float(), -1).numpy())
        return np.array(out)

    ((view_prompts, perm),) = views
    want = (one_by_one(prompts) + one_by_one(view_prompts)[:, np.argsort(perm)]) / 2
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.abs(got - 1 / 3).max() > 1e-3  # not uniform: the head says something


@native_bf16
def test_classifier_trains_and_evaluates_in_bf16(tmp_path):
    """Regressions: the evaluation fed the bf16 hidden state into the fp32 head and failed; then, run
    under the steps' autocast, the metric's fast-path probe lifted the autocast on the 4-bit model and
    its LoRA layers met bf16 inputs with fp32 weights."""
    lmsys = dict(competition="lmsys", train=str(DATA / "lmsys" / "train.csv"), valid=None)
    cfg = small(tmp_path, **lmsys, head="classifier", loss="answer", dtype="bfloat16", max_length=128)
    res = train(replace(cfg, max_steps=1, eval_every=1, eval_metric=True))  # quant: nf4, bf16 compute dtype
    evals = [h for h in res.history if "eval_loss" in h]
    assert len(evals) == 2 and all(np.isfinite(h["eval_loss"]) and np.isfinite(h["metric"]) for h in evals)


def test_classifier_adapter_is_refused_where_it_does_not_fit(classifier_adapter):
    kit, tok = load_model("demo", detect("float32", "cpu"), adapter=str(classifier_adapter))
    with pytest.raises(ConfigError, match="classification head has 3 classes"):
        choice_task(kit, tok, ["Which?"], ["A", "B", "C", "D"])
    with pytest.raises(ConfigError, match="classification head, which scores labels; generation"):
        generation_task(kit, tok, ["Say hi"])
    with pytest.raises(ConfigError, match="'head'"):
        TrainConfig(competition="lmsys", train="x.csv", head="classifier")  # loss: completion
    with pytest.raises(ConfigError, match="prompt_recovery is generate_text"):
        train(TrainConfig(competition="prompt_recovery", train="x.csv", head="classifier", loss="answer"))
