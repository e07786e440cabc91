"""Sequence-classification heads (`head: classifier`) on the real SmolLM2 and Gemma-3-270M (rows past its
window): trained with LoRA on LMSYS rows, saved as peft saves a classification adapter, and scored by the
kit's engine (batched, prefix cache, A/B swap view) exactly as plain transformers'
AutoModelForSequenceClassification + peft score it, one row at a time in fp32 with eager attention; the
training loss and gradients too."""

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


def classifier_pair(tmp_path, name: str, max_length: int):
    """(cfg, tok, split, kit, plain) on LMSYS rows: the kit's training model with a classifier head (LoRA B
    drawn, so the adapter moves the numbers) and plain transformers' AutoModelForSequenceClassification +
    peft (eager attention) holding the same trainable weights, both fp32."""
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification

    from kaggle_kit.jobs.training import prepare_data
    from kaggle_kit.models import resolve_model
    from kaggle_kit.train import model as model_lib

    if name.startswith("tiny:"):
        from .. import tiny_models

        name = str(tiny_models.save(name.removeprefix("tiny:"), tmp_path / "tiny"))
    lmsys = dict(competition="lmsys", train=str(DATA / "lmsys" / "train.csv"), valid=None)
    cfg = small(tmp_path, **lmsys, model=name, head="classifier", loss="answer", quant="none", dtype="float32")
    cfg = replace(cfg, max_length=max_length)
    tok = model_lib.tokenizer(cfg)
    split = prepare_data(cfg, tok)
    torch.manual_seed(0)
    kit, _ = model_lib.build(cfg, detect("float32"), split.label_ids, tok)
    with torch.no_grad():
        for n, p in kit.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    plain = AutoModelForSequenceClassification.from_pretrained(
        resolve_model(name), num_labels=len(split.label_ids), dtype=torch.float32, attn_implementation="eager"
    )
    plain.config.pad_token_id = tok.pad_token_id
    plain = get_peft_model(plain, replace(kit.peft_config["default"], task_type="SEQ_CLS"))
    ours = dict(kit.named_parameters())
    trained = {n: p for n, p in plain.named_parameters() if p.requires_grad}
    assert trained.keys() <= ours.keys() and any(".score." in n for n in trained)
    with torch.no_grad():
        for n, p in trained.items():
            p.copy_(ours[n])
    return cfg, tok, split, kit, plain


@pytest.mark.parametrize("name, max_length", [("demo", 256), ("demo:gemma3", 768), ("tiny:gemma2", 256)])
def test_classifier_training_gives_plain_sequence_classifications_loss_and_gradients(tmp_path, name, max_length):
    """The training forward of a classifier head (data.class_logits: right-padded rows with no mask, the last
    layer on the answer positions only, the fast LoRA and norms) gives the loss and every LoRA and head
    gradient of plain transformers' AutoModelForSequenceClassification + peft, fp32, eager attention, one
    prompt at a time. On both real models (Gemma-3 on rows past its 512-token window beside a short one) and a
    tiny Gemma 2 (soft-capped attention, eager; rows past its 64-token window)."""
    from kaggle_kit.train import data, step

    cfg, tok, split, kit, plain = classifier_pair(tmp_path, name, max_length)
    by_length = sorted(split.train, key=lambda e: len(e.input_ids))
    rows = [by_length[0], *by_length[-2:]]  # the shortest and the two longest: unequal, right-padded
    if max_length > 512:
        assert len(rows[0].input_ids) < 512 < len(rows[1].input_ids)
    ids, mask, labels = data.collate(rows, tok.pad_token_id)
    kit.train()
    loss = step.loss(kit, kit, cfg, split, ids, mask, labels, len(rows))
    loss.backward()
    plain.train()
    want = 0.0
    for e in rows:
        k = next(i for i, t in enumerate(e.labels) if t != data.IGNORE)  # the answer token: the prompt ends before it
        logits = plain(input_ids=torch.tensor([e.input_ids[:k]])).logits
        part = torch.nn.functional.cross_entropy(logits, torch.tensor([split.label_ids.index(e.labels[k])]))
        (part / len(rows)).backward()
        want += float(part.detach()) / len(rows)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    ours = dict(kit.named_parameters())
    for n, p in plain.named_parameters():
        if p.requires_grad:
            # fp32 rounding: batched rows against one prompt at a time, carried back through every layer;
            # measured up to 4.0e-5 of a tensor's largest (SmolLM2, a gate_proj A whose gradients are 1/1000
            # of the head's), 3.7e-5 with the kit's fast paths off: the batch's rounding, not the fast paths'
            assert (ours[n].grad - p.grad).abs().max() <= 1e-4 * p.grad.abs().max(), n


def test_a_gemma3_classifier_adapter_scores_as_plain_sequence_classification_past_its_window(tmp_path, monkeypatch):
    """A classifier adapter on the real Gemma-3-270M, saved as training saves it, scored by the engine (rows
    of ~100-700 tokens around its 512-token window sharing batches, the A/B-swapped view through the rows'
    shared heads) as plain AutoModelForSequenceClassification + peft scores each prompt alone, fp32."""
    from kaggle_kit.infer.fast import views as views_lib
    from kaggle_kit.train import checkpoint

    from .test_families import lmsys_rows

    monkeypatch.setattr(views_lib, "MIN_SAVED", 0.0)  # two stages however little they save: under test here
    cfg, tok, split, kit, plain = classifier_pair(tmp_path, "demo:gemma3", 768)
    adapter = checkpoint.save(tmp_path / "adapter", kit, tok, cfg)
    del kit
    scorer, tok = load_model("demo:gemma3", detect("float32", "cpu"), adapter=str(adapter))
    prompts, view, sizes = lmsys_rows(tok, (98, 338, 538, 693))
    assert min(sizes) < 512 < max(sizes)
    task = choice_task(scorer, tok, prompts, list(competitions.get("lmsys").labels), max_length=1400, views=[view])
    got, _ = run_task(task, scorer, batch_tokens=4096, progress=False)
    assert task.settings["label_head"] == "classifier" and task.settings["view_heads"]

    def one_by_one(texts):
        out = []
        for row in encode(tok, texts, 1400):
            with torch.inference_mode():
                out.append(torch.softmax(plain(input_ids=torch.tensor([row])).logits[0], -1).numpy())
        return np.array(out)

    plain.eval()
    view_prompts, perm = view
    want = (one_by_one(prompts) + one_by_one(view_prompts)[:, np.argsort(perm)]) / 2
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(got - 1 / 3).max() > 1e-3
