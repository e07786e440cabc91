"""QLoRA training on the real SmolLM2 (CPU): what changes, what does not, equivalences, resume, configs."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import pandas as pd
import pytest
import torch

from kaggle_kit.config import TrainConfig, load_yaml_config
from kaggle_kit.errors import ConfigError, InputError
from kaggle_kit.hardware import detect
from kaggle_kit.jobs import train
from kaggle_kit.train import model as model_lib

from ..conftest import DATA, ROOT, alpaca_valid, write_subset

ALPACA = DATA / "alpaca" / "train.json"
VALID = DATA / "alpaca" / "public_test.json"


def small(tmp_path, **kw):
    base = dict(
        competition="alpaca",
        train=str(ALPACA),
        valid=str(VALID),
        out=str(tmp_path / "run"),
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        max_length=160,
        batch_size=2,
        grad_accum=1,
        lr=1e-3,
        scheduler="constant",
        warmup_ratio=0.0,
        max_steps=3,
        eval_every=3,
        log_every=1,
        eval_metric=False,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


def test_qlora_steps_change_every_lora_param_and_no_base_weight(tmp_path, monkeypatch):
    from kaggle_kit.infer.fast import heap
    from kaggle_kit.train import loop

    released, release = [], heap.release_heap
    monkeypatch.setattr(loop, "HEAP_GROWTH", -1.0)  # any step past the first two hands the heap back
    monkeypatch.setattr(heap, "release_heap", lambda: released.append(1) or release())
    cfg = small(tmp_path)
    model, _ = model_lib.build(cfg, detect())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = train(cfg)
    assert res.steps == 3
    assert released == [1]  # a CPU run's watch hands the heap back past its growth, after 2 settling steps
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in res.history if "train_loss" in h)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from kaggle_kit.models import demo_model_dir

    dtype = getattr(torch, detect().compute_dtype)  # as train() built it: bf16 here rounds the fp32 file
    bnb = BitsAndBytesConfig(**{**detect().bnb_4bit(), "bnb_4bit_compute_dtype": dtype})
    base = AutoModelForCausalLM.from_pretrained(
        demo_model_dir(), quantization_config=bnb, dtype=dtype, device_map={"": "cpu"}
    )
    trained = PeftModel.from_pretrained(base, res.out / "last")
    after = dict(trained.named_parameters())
    lora = [n for n in before if "lora_" in n]
    assert len(lora) > 100
    for n in lora:
        assert not torch.equal(before[n], after[n].detach()), f"{n} did not change"
    frozen = [n for n in before if "lora_" not in n]
    for n in frozen:
        assert torch.equal(before[n], after[n].detach()), f"base weight {n} changed"
    assert (res.out / "loss_curve.png").stat().st_size > 1000
    assert {"adapter_model.safetensors", "kit_config.json", "tokenizer.json", "metrics.jsonl"} <= {
        p.name for p in (res.out / "last").iterdir()
    }


def test_lora_gradients_through_4bit_match_dequantised_fp32(tmp_path):
    """bitsandbytes 4-bit on CPU: LoRA gradients equal those of the same weights dequantised to fp32."""
    import bitsandbytes.functional as F
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    # fp32 compute on both sides: the test checks bitsandbytes' 4-bit backward, not bf16 rounding
    cfg = small(tmp_path, target_modules=["q_proj", "v_proj", "down_proj"], dtype="float32")
    q_model, tok = model_lib.build(cfg, detect("float32"))
    plain, _ = model_lib.build(replace(cfg, quant="none"), detect("float32"))
    qmods = dict(q_model.named_modules())
    with torch.no_grad():
        for name, mod in plain.named_modules():  # plain <- dequantised NF4 weights
            qmod = qmods.get(name)
            if qmod is not None and hasattr(qmod, "weight") and getattr(qmod.weight, "quant_state", None) is not None:
                mod.weight.copy_(F.dequantize_4bit(qmod.weight.data, qmod.weight.quant_state).float())
        torch.manual_seed(0)
        for n, p in q_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)  # B=0 at init would give A no gradient
    set_peft_model_state_dict(plain, get_peft_model_state_dict(q_model))
    x = tok(["The capital of France is Paris, and Berlin is in Germany."], return_tensors="pt")["input_ids"]
    for m in (q_model, plain):
        m.train()
        m(input_ids=x, labels=x).loss.backward()
    qg = {n: p.grad for n, p in q_model.named_parameters() if p.requires_grad}
    pg = {n: p.grad for n, p in plain.named_parameters() if p.requires_grad}
    assert qg.keys() == pg.keys() and len(qg) > 10
    for n in qg:
        torch.testing.assert_close(qg[n], pg[n], rtol=2e-3, atol=2e-5)


@pytest.mark.parametrize("dtype", ["float32", None])
def test_batch4_accum1_equals_batch1_accum4(tmp_path, dtype):
    """Token-weighted loss over the whole optimizer step: same loss and gradient norm either way. Exact to
    fp32 rounding in fp32; in the profile's dtype (bf16 on a CPU with native bf16) each batch shape rounds
    its own way, so the match is to bf16's precision instead (AMX kernels, Intel: 0.45% apart on the loss;
    a wrongly weighted accumulation would be off by a factor up to 4)."""
    tol = {"float32": (1e-4, 1e-3), "bfloat16": (1e-2, 2e-2)}[detect(dtype).compute_dtype]
    recs = json.loads(ALPACA.read_text())[:4]
    four = tmp_path / "four.json"
    four.write_text(json.dumps(recs, ensure_ascii=False))
    valid = alpaca_valid(tmp_path, 6)  # each run evaluates twice, run b one row at a time
    kw = dict(train=str(four), valid=str(valid), max_steps=1, eval_every=1, dtype=dtype)
    a = train(small(tmp_path, out=str(tmp_path / "a"), batch_size=4, grad_accum=1, **kw))
    b = train(small(tmp_path, out=str(tmp_path / "b"), batch_size=1, grad_accum=4, **kw))
    la = [h for h in a.history if "train_loss" in h][0]
    lb = [h for h in b.history if "train_loss" in h][0]
    assert la["train_loss"] == pytest.approx(lb["train_loss"], rel=tol[0])
    assert la["grad_norm"] == pytest.approx(lb["grad_norm"], rel=tol[1])
    ea = [h["eval_loss"] for h in a.history if "eval_loss" in h][-1]
    eb = [h["eval_loss"] for h in b.history if "eval_loss" in h][-1]
    assert ea == pytest.approx(eb, rel=tol[1])


def test_an_out_of_memory_step_runs_again_in_pieces(tmp_path, monkeypatch, caplog):
    """A step whose second micro-batch runs out of memory (injected, as on a T4: the first one's gradients
    are already summed) starts again in pieces, and every later step runs in pieces: each step's loss,
    gradient norm and the final evaluation equal a run that had the memory (fp32). An evaluation batch out
    of memory runs again in halves (one row here), and so does every later one."""
    from kaggle_kit.train import step

    recs = json.loads(ALPACA.read_text())[:4]
    four = tmp_path / "four.json"
    four.write_text(json.dumps(recs, ensure_ascii=False))
    kw = dict(train=str(four), valid=str(alpaca_valid(tmp_path, 4)), max_steps=2, eval_every=2, dtype="float32")
    kw.update(batch_size=2, grad_accum=2)
    ref = train(small(tmp_path, out=str(tmp_path / "ref"), **kw))

    shapes, evals, loss = [], [], step.loss

    def short_of_memory(model, core, cfg, split, ids, *args):
        seen = shapes if model.training else evals
        if ids.shape[0] > 1 and (shapes or not model.training):  # any batch of two rows but the run's first
            seen.append("oom")
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        seen.append(tuple(ids.shape))
        return loss(model, core, cfg, split, ids, *args)

    monkeypatch.setattr(step, "loss", short_of_memory)
    with caplog.at_level("WARNING", logger="kaggle_kit"):
        res = train(small(tmp_path, out=str(tmp_path / "oom"), **kw))
    assert "tokens out of memory" in caplog.text and res.steps == 2
    assert "evaluation: 2 rows" in caplog.text
    shapes = [s for s in shapes if s != "oom"]
    assert shapes[0][0] == 2 and all(s[0] == 1 for s in shapes[1:])  # the first step again, then step 2: rows
    assert len(shapes) == 1 + 4 + 4
    assert evals[0] == "oom" and evals.count("oom") == 1 and all(s[0] == 1 for s in evals[1:])
    assert len(evals) - 1 == 4 * sum("eval_loss" in h for h in res.history)  # every row, once per evaluation
    steps = [[h for h in r.history if "train_loss" in h] for r in (ref, res)]
    for a, b in zip(*steps, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)
    evals = [[h["eval_loss"] for h in r.history if "eval_loss" in h][-1] for r in (ref, res)]
    assert evals[1] == pytest.approx(evals[0], rel=1e-3)


def test_torchrun_two_cpu_processes_train_to_completion(tmp_path):
    """accelerate MULTI_CPU (gloo) under torchrun: both processes finish, rank 0 writes the checkpoints."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    valid = alpaca_valid(tmp_path, 4)  # 2 rows per process: the evaluation still runs on both
    args = [
        "--config",
        str(ROOT / "configs" / "alpaca_demo.yaml"),
        "--set",
        f"out={tmp_path / 'ddp'}",
        "--set",
        f"train={ALPACA}",
        "--set",
        f"valid={valid}",
        "--set",
        "batch_size=2",
        "--set",
        "grad_accum=1",
        "--set",
        "max_steps=2",
        "--set",
        "eval_every=2",
        "--set",
        "lora_r=4",
        "--set",
        "max_length=160",
        "--set",
        "eval_metric=false",
        "--set",
        "best_by=eval_loss",
        "--set",
        "progress=false",
    ]
    r = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "-m", "kaggle_kit", "train", "alpaca", *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.count("MULTI_CPU, 2 process(es)") == 2
    assert r.stdout.count("2 steps (done)") == 2
    assert (tmp_path / "ddp" / "last" / "adapter_model.safetensors").is_file()


def test_trained_adapter_predicts_with_nothing_else(tmp_path):
    """predict --adapter DIR: the checkpoint names its base model, quantisation and chat format (seed
    004's alpaca format here); the submission is valid."""
    cfg = small(
        tmp_path,
        competition="science_exam",
        train=str(DATA / "science_exam" / "train.csv"),
        valid=None,
        valid_fraction=0.1,  # 4 rows: NF4 on a CPU is slow
        loss="answer",
        max_length=400,
        max_steps=1,
        eval_every=1,
        chat_format="alpaca",
    )
    res = train(cfg)
    from kaggle_kit.competitions import get
    from kaggle_kit.models import load_model

    model, tok = load_model(None, detect("float32"), adapter=res.best)
    prompt = get("science_exam").examples(get("science_exam").read(DATA / "science_exam" / "test.csv").head(1), tok)[0]
    assert prompt.startswith("Below is an instruction") and prompt.endswith("### Response:\n")
    assert any("Linear4bit" in type(m).__name__ for m in model.modules())  # trained on NF4: loaded on NF4
    # and scored in the layout it was trained in, the load's probe forwards included (bitsandbytes would
    # repack it for its CPU kernel at the first one)
    states = [m.weight.quant_state for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    assert states and not any(getattr(s, "packing_format_for_cpu", False) for s in states)
    assert not any(getattr(m, "support_avx512bf16_for_cpu", False) for m in model.modules())
    out = tmp_path / "sub.csv"
    rows = write_subset("science_exam", tmp_path, 4)  # a few rows show it loads and runs
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kaggle_kit",
            "predict",
            "science_exam",
            "--data",
            str(rows),
            "--adapter",
            str(res.best),
            "--out",
            str(out),
            "--no-progress",
            "--max-length",
            "400",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "4 predicted" in r.stdout

    # several adapters side by side, switched by name; and merging into an unquantised copy
    from kaggle_kit.models import merge_adapter

    model, tok = load_model(None, detect("float32"), adapter={"best": res.best, "last": res.out / "last"}, quant="none")
    assert set(model.peft_config) == {"best", "last"} and model.active_adapter == "best"
    model.set_adapter("last")
    x = tok(["Which gas do plants take in?"], return_tensors="pt")
    with torch.inference_mode():
        unmerged = model(**x).logits
    merged_dir = merge_adapter(res.out / "last", tmp_path / "merged", dtype="float32")
    merged, _ = load_model(str(merged_dir), detect("float32"))
    with torch.inference_mode():
        torch.testing.assert_close(merged(**x).logits, unmerged, rtol=1e-3, atol=1e-3)


def test_shipped_configs_are_valid():
    """Every training config in configs/ loads (routes_*.yaml are serving routes, tested with the router;
    ensemble_*.yaml ensemble files)."""
    from kaggle_kit.jobs.ensemble import load_spec

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if path.name.startswith("routes_"):
            continue
        if path.name.startswith("ensemble_"):
            assert len(load_spec(path).members) >= 2
            continue
        cfg = load_yaml_config(TrainConfig, str(path))
        assert cfg.competition in ("science_exam", "lmsys", "prompt_recovery", "alpaca"), path


@pytest.mark.parametrize(
    "override,field",
    [
        ("lora_r=0", "lora_r"),
        ("scheduler=warp", "scheduler"),
        ("lora_dropout=1.5", "lora_dropout"),
        ("colour=red", "colour"),
        ("target_modules=7", "target_modules"),
        ("loss=all", "loss"),
        ("soft_labels=teacher.csv,loss=completion", "soft_labels"),  # distillation needs loss: answer
        ("chat_format=chatml", "chat_format"),
        ("distill_weight=2", "distill_weight"),
        ("quant=fp4", "quant"),
        ("report_to=slack", "report_to"),
        ("per_device_eval_batch_size=0", "eval_batch_size"),
    ],
)
def test_bad_config_names_the_field(override, field):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        load_yaml_config(TrainConfig, str(ROOT / "configs" / "science_exam_demo.yaml"), override.split(","))


def test_report_to_tensorboard_logs_the_curve_through_accelerate(tmp_path):
    res = train(small(tmp_path, report_to="tensorboard", max_steps=2, eval_every=2))
    events = sorted((res.out / "logs").rglob("events.out.tfevents.*"))  # the scalars', the hparams' own
    logged = b"".join(e.read_bytes() for e in events)
    # every metrics.jsonl key (train and eval rows) is a scalar in the event file, the hyperparameters too
    for key in ("train_loss", "lr", "grad_norm", "eval_loss", "perplexity", "lora_r"):
        assert key.encode() in logged, key
    assert [h["step"] for h in res.history if "train_loss" in h] == [1, 2]


def test_report_to_a_tracker_not_installed_says_what_to_install(tmp_path):
    import importlib.util

    if importlib.util.find_spec("wandb"):
        pytest.skip("wandb is installed here")
    with pytest.raises(ConfigError, match="pip install wandb"):
        train(small(tmp_path, report_to=["wandb"], model=str(tmp_path / "never-loaded")))


def test_missing_train_file_or_column_is_input_error(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        train(small(tmp_path, competition="science_exam", train=str(tmp_path / "none.csv"), valid=None))
    bad = tmp_path / "train.csv"
    bad.write_text("id,prompt,A,B,C,D,E\n1,q,a,b,c,d,e\n")
    with pytest.raises(InputError, match="'answer'"):
        train(small(tmp_path, competition="science_exam", train=str(bad), valid=None))


def test_int8_base_trains_and_predicts_in_8bit(tmp_path):
    """quant=int8 (LLM.int8 base, faster than 4-bit on a T4 for several LMSYS teams): LoRA learns, and
    the adapter is loaded back on an 8-bit base, as it was trained."""
    from bitsandbytes.nn import Linear8bitLt
    from safetensors.torch import load_file

    from kaggle_kit.models import load_model

    res = train(small(tmp_path, quant="int8", max_steps=2, eval_every=2, max_length=96))
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in res.history if "train_loss" in h)
    weights = load_file(res.out / "last" / "adapter_model.safetensors")
    lora_b = [k for k in weights if "lora_B" in k]
    assert lora_b and all(weights[k].abs().sum() > 0 for k in lora_b)  # B starts at zero: every one learned
    model, tok = load_model(None, detect("float32"), adapter=res.out / "last")
    assert any(isinstance(m, Linear8bitLt) for m in model.modules())
    with torch.inference_mode():
        assert torch.isfinite(model(**tok(["Hello"], return_tensors="pt")).logits).all()


def _distil_cfg(tmp_path, name, **kw):
    return small(
        tmp_path,
        competition="lmsys",
        train=str(DATA / "lmsys" / "train.csv"),
        valid=None,
        valid_fraction=0.3,
        loss="answer",
        quant="none",  # the objective is what is compared; plain LoRA builds and steps faster on a CPU
        max_length=192,
        max_steps=1,
        eval_every=1,
        out=str(tmp_path / name),
        **kw,
    )


def test_distillation_with_one_hot_teacher_equals_hard_labels_and_soft_teacher_differs(tmp_path):
    """KL to a one-hot teacher is the hard-label NLL: same losses and gradient norms step by step."""
    import pandas as pd

    cols = ["winner_model_a", "winner_model_b", "winner_tie"]
    df = pd.read_csv(DATA / "lmsys" / "train.csv")
    df[["id", *cols]].to_csv(tmp_path / "onehot.csv", index=False)
    soft = df[["id", *cols]].copy()
    soft[cols] = soft[cols] * 0.4 + 0.2  # 0.6 on the winner, 0.2 elsewhere
    soft.to_csv(tmp_path / "soft.csv", index=False)

    def steps(res):
        return [(h["train_loss"], h["grad_norm"]) for h in res.history if "train_loss" in h]

    # paired rows (views=2): the teacher's A and B probabilities must swap with the responses, or the
    # one-hot run would train on wrong targets for half its rows and differ from the hard run
    hard = steps(train(_distil_cfg(tmp_path, "hard", views=2)))
    onehot = steps(train(_distil_cfg(tmp_path, "onehot", soft_labels=str(tmp_path / "onehot.csv"), views=2)))
    smooth = steps(train(_distil_cfg(tmp_path, "soft", soft_labels=str(tmp_path / "soft.csv"), views=2)))
    assert len(hard) == len(onehot) == 1
    assert onehot[0][0] == pytest.approx(hard[0][0], rel=1e-4)
    assert onehot[0][1] == pytest.approx(hard[0][1], rel=1e-4)  # same gradient norm
    assert abs(smooth[0][0] - hard[0][0]) > 1e-3  # a soft teacher is another objective

    df.iloc[::2][["id", *cols]].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(InputError, match="have no soft labels"):
        train(_distil_cfg(tmp_path, "bad", soft_labels=str(tmp_path / "short.csv")))


def alpaca_batch(tok, length: int):
    """(ids, mask, labels) of alpaca rows, right-padded, completions of unequal length: 3 rows at 96 tokens
    (SmolLM2: 96, 96 and 88; Gemma-3: 66, 38 and 32), or at 700 two rows whose inputs are other records'
    outputs: 576 and 663 of Gemma-3's tokens, past its 512-token window."""
    from kaggle_kit.train import data

    recs = json.loads(ALPACA.read_text())
    if length > 96:  # each row's input: other records' outputs, enough to run past the window
        context = [" ".join(r["output"] for r in recs[10:k]) for k in (36, 33)]
        recs = [{**r, "input": c} for r, c in zip(recs[:2], context)]
    prompts, outputs = data.alpaca_pairs(recs[:2] + recs[5:6], tok)
    examples, _ = data.tokenize(tok, prompts, outputs, length)
    if length > 96:
        assert sorted(len(e.input_ids) for e in examples) == [576, 663]  # padded to 663, both past 512
    return data.collate(examples, tok.pad_token_id)


@pytest.mark.parametrize("name, length", [("demo", 96), ("demo:gemma3", 96), ("demo:gemma3", 700)])
def test_label_position_logits_give_the_models_own_loss_and_gradients(tmp_path, monkeypatch, name, length):
    """The loop computes logits only where a label is, a chunk of positions at a time from the hidden
    states (data.chunked_token_loss; data.label_logits where a model's head is not its logits): the loss
    and every LoRA gradient equal those of the model's own `labels=` loss over full logits. On both real
    architectures: SmolLM2 (49k vocabulary) and Gemma-3-270M (262k, tied, sliding windows), with the
    last layer's per-position work on the labelled positions only and no padding mask (train/fast.py);
    Gemma-3 also on two rows past its 512-token window (a long context before the instruction), there
    against the model's own forward and head at the labelled positions only (labelled_loss: full logits
    at 700 tokens would be most of the test's time)."""
    from kaggle_kit.infer.fast.last_position import last_layer
    from kaggle_kit.train import data, fast

    cfg = small(tmp_path, quant="none", dtype="float32", max_length=length, model=name)
    torch.manual_seed(0)  # LoRA A's draws: the same numbers whichever tests ran before in this process
    model, tok = model_lib.build(cfg, detect("float32"))
    vocab = model.get_output_embeddings().weight.shape[0]
    # 17 positions a chunk at most, so completions span several (112: 7 chunks of 16, 58: 4 of 14-15, 34: 2 of
    # 17); not fewer, whose fp32 products over Gemma-3's vocabulary round ~10x more (58 positions in chunks
    # of 7-8: 2.4e-4 of a tensor's largest from fp64, against 2.3e-5 in chunks of 14-15 and whole; 34 in
    # chunks of 11-12: 1.2e-4 from the whole product; data.chunk_rows; in fp64 chunks and whole agree to 1.6e-15)
    monkeypatch.setattr(data, "LOGIT_CHUNK", 17 * vocab)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    ids, mask, labels = alpaca_batch(tok, length)
    n_items = int((labels[:, 1:] != data.IGNORE).sum())
    grads, seen = [], []
    assert data.head_is_exact(model, ids)
    assert fast.padding_mask(model, mask) is None and not mask.all()  # right-padded rows run without a mask
    last_mlp = last_layer(model).mlp.down_proj  # the last layer runs on the labelled positions only
    hook = last_mlp.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1]))
    for way in ("full", "label positions", "chunks"):
        model.zero_grad()
        if way == "full" and length > 96:  # the same over the labelled positions' logits (labelled_loss)
            loss = labelled_loss(model, ids, mask, labels)
        elif way == "full":
            loss = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=n_items).loss
        elif way == "chunks":
            hidden, targets = data.labelled_hidden(model, model, ids, mask, labels)
            assert hidden.shape[0] == n_items > 17
            loss = data.chunked_token_loss(model, hidden, targets, n_items)
        else:
            logits, targets = data.label_logits(model, ids, mask, labels)
            assert logits.shape[1] < ids.shape[1] - 1  # fewer positions than the sequence
            loss = data.token_loss(logits, targets, n_items)
        loss.backward()
        grad = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        grads.append((float(loss.detach()), grad))
    hook.remove()
    assert seen[0] == ids.shape[1] and seen[1] == seen[2] < ids.shape[1] - 1
    (loss, grad), (chunked, by_chunk) = grads[1:]
    assert loss == pytest.approx(grads[0][0], rel=1e-6) and chunked == pytest.approx(grads[0][0], rel=1e-6)
    for n, g in grads[0][1].items():
        # the last layer's products over the labelled positions only: sums of fewer terms, blocked otherwise,
        # and attention without the padding mask (SDPA's causal kernel): fp32 rounding carried back through
        # every layer; measured up to 6.9e-6 of a tensor's largest
        assert (grad[n] - g).abs().max() <= 2e-5 * g.abs().max(), n
        # chunks: the head's product and its backward (a sum over the vocabulary) blocked otherwise too;
        # measured up to 6.9e-6 of a tensor's largest as well
        assert (by_chunk[n] - g).abs().max() <= 2e-5 * g.abs().max(), n


def labelled_loss(model, ids, mask, labels):
    """The model's mean next-token loss over the labelled positions, from its own forward and head with
    logits only at the positions some row has a label for (logits_to_keep as indices): the positions the
    loop's loss reads, not Gemma-3's 262k-vocabulary logits at every position (most of the time of a
    700-token pair, and nothing flows back from an unlabelled position either way)."""
    from kaggle_kit.train.data import IGNORE

    keep = (labels[:, 1:] != IGNORE).any(0).nonzero().squeeze(1)
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
    assert logits.shape[1] == len(keep) < ids.shape[1] - 1
    targets = labels[:, keep + 1]
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


@pytest.mark.parametrize("name, length", [("demo", 96), ("demo:gemma3", 96), ("demo:gemma3", 700)])
def test_training_fast_paths_give_plain_pefts_loss_and_gradients(tmp_path, name, length):
    """The training fast paths on the real models, fp32: with them (the fused LoRA forward, the norms'
    closed-form backward, Gemma-3's q/k norms among them, the MLPs' recomputed activation) the model's loss
    over its labelled positions and every LoRA gradient are those of peft's forward, autograd's norms and the MLPs' own
    forward (fast_paths: false), in training mode after an evaluation's switch; Gemma-3 also on two rows
    past its 512-token window."""
    runs = []
    for fast in (True, False):
        cfg = small(tmp_path, quant="none", dtype="float32", max_length=length, model=name, fast_paths=fast)
        torch.manual_seed(0)  # the same LoRA A draws in both builds
        model, tok = model_lib.build(cfg, detect("float32"))
        # as the loop switches for its evaluations: transformers' kernelize on a switch would put each
        # decorated layer's own forward back (SmolLM2's norms), were the model loaded with kernels
        model.eval()
        model.train()
        patched = sum("forward" in m.__dict__ for m in model.modules())
        torch.manual_seed(1)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.02)  # B=0 at init would give A no gradient
        ids, mask, labels = alpaca_batch(tok, length)
        loss = labelled_loss(model, ids, mask, labels)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        runs.append((patched, float(loss.detach()), grads))
        del model
    (patched, loss, grads), (none, plain_loss, plain_grads) = runs
    layers = 30 if name == "demo" else 18
    assert none == 0 and patched == layers * 7 + (layers * (2 if name == "demo" else 6) + 1) + layers  # + MLPs
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    assert grads.keys() == plain_grads.keys()
    for n, g in plain_grads.items():
        # measured up to 9.5e-6 (SmolLM2), 2.9e-6 (Gemma-3) and 3.5e-6 (Gemma-3 past its window) of a tensor's
        # largest, all of it the norms' (the fused LoRA alone: 0); fp32 itself is 1.9e-5 and 2.8e-5 from fp64
        # at 96 tokens, with either norm
        assert (grads[n] - g).abs().max() <= 5e-5 * g.abs().max(), n


@pytest.mark.parametrize("name, head", [("demo", 56), ("demo:gemma3", 31)])
def test_a_batchs_shared_head_runs_once_with_the_rows_loss_and_gradients(tmp_path, name, head):
    """train/shared_head.py on the real models, fp32: four Science Exam rows start with the same chat turn
    and instruction (SmolLM2: 56 tokens, Gemma-3-270M: 31 with its BOS); packed around it, the batch runs those tokens
    once and gives the loss and every LoRA gradient of the same rows unshared (all of the step's other fast
    paths on, as the loop runs them). Past Gemma-3's sliding window the batch stays rows."""
    import torch.nn.functional as F

    from kaggle_kit.jobs import training
    from kaggle_kit.train import data, shared_head

    train_csv = str(DATA / "science_exam" / "train.csv")
    cfg = small(tmp_path, competition="science_exam", train=train_csv, valid=None, quant="none", dtype="float32")
    cfg = replace(cfg, model=name, max_length=512, loss="answer")
    torch.manual_seed(0)
    model, tok = model_lib.build(cfg, detect("float32"))
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    ids, mask, labels = data.collate(training.prepare_data(cfg, tok).train[:4], tok.pad_token_id)
    assert shared_head.head_length(ids, mask, labels) == head
    n_items = int((labels[:, 1:] != data.IGNORE).sum())
    runs, shapes = [], []
    decoder = model.get_base_model().get_decoder()
    hook = decoder.register_forward_pre_hook(lambda m, a, kw: shapes.append(kw["input_ids"].shape), with_kwargs=True)
    for share in (True, False):
        model.zero_grad(set_to_none=True)
        loss = data.chunked_token_loss(model, *data.labelled_hidden(model, model, ids, mask, labels, share), n_items)
        loss.backward()
        runs.append(
            (float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        )
    hook.remove()
    packed = head + int((mask.sum(dim=1) - head).sum())
    assert shapes[2] == (1, packed) and shapes[3] == ids.shape  # after the check of the first two rows
    (loss, grads), (want_loss, want_grads) = runs
    assert loss == pytest.approx(want_loss, rel=1e-6)
    assert grads.keys() == want_grads.keys() and grads
    for n, g in want_grads.items():  # measured up to 3.8e-6 (SmolLM2) and 4.2e-6 (Gemma-3) of a tensor's largest
        assert (grads[n] - g).abs().max() <= 2e-5 * g.abs().max(), n
    # the same rows padded past Gemma-3-270M's 512-token sliding window run as rows (SmolLM2 has none)
    fill = ((ids, tok.pad_token_id), (mask, 0), (labels, data.IGNORE))
    wide = [F.pad(t, (0, 600 - t.shape[1]), value=v) for t, v in fill]
    assert (shared_head.packed(model, *wide) is None) == (name == "demo:gemma3")


def test_the_eval_loss_is_the_same_at_any_eval_batch_size(tmp_path, monkeypatch):
    """`eval_batch_size` (Trainer's `per_device_eval_batch_size`; None: batch_size) sets the eval-loss
    batches: 5 validation rows run one at a time, in 2 + 2 + 1, or all at once, and in fp32 the eval loss
    is the same; also with the rows' shared head run once (train/shared_head.py: then a batch is one
    packed row, so the batches are counted with it off)."""
    from kaggle_kit.train import data, loop, shared_head

    demo = str(ROOT / "configs" / "science_exam_demo.yaml")
    assert load_yaml_config(TrainConfig, demo).eval_batch_size is None
    assert load_yaml_config(TrainConfig, demo, ["per_device_eval_batch_size=2"]).eval_batch_size == 2
    cfg = small(tmp_path, quant="none", dtype="float32")
    model, tok = model_lib.build(cfg, detect("float32"))
    prompts, outputs = data.alpaca_pairs(json.loads(ALPACA.read_text())[:5], tok)
    split = loop.Split(train=[], valid=data.tokenize(tok, prompts, outputs, 160)[0])
    loop.evaluate(model, tok, split, cfg)  # its first batch also checks the head once (data.head_is_exact)
    shared = loop.evaluate(model, tok, split, replace(cfg, eval_batch_size=5))["eval_loss"]
    rows = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0]))
    monkeypatch.setattr(shared_head, "MIN_HEAD", 10**9)
    losses = {}
    for size in (1, 2, 5):
        rows.clear()
        losses[size] = loop.evaluate(model, tok, split, replace(cfg, eval_batch_size=size))["eval_loss"]
        assert rows == {1: [1] * 5, 2: [2, 2, 1], 5: [5]}[size]
    hook.remove()
    assert losses[2] == pytest.approx(losses[1], rel=1e-6) and losses[5] == pytest.approx(losses[1], rel=1e-6)
    assert shared == pytest.approx(losses[1], rel=1e-6)


def test_an_evaluation_does_not_change_the_training_numbers(tmp_path):
    """Regression: on an AVX512-BF16 CPU bitsandbytes repacked 4-bit weights at the first no-grad eval
    forward, so the training loss after an evaluation differed, and a resumed run (no step-0 eval in
    its process) drifted from the uninterrupted one (kill -9 test, 1.5e-4 on the adapter)."""
    cfg = small(tmp_path, dtype="float32")
    model, tok = model_lib.build(cfg, detect("float32"))
    x = tok(["The capital of France is Paris, and Berlin is in Germany."], return_tensors="pt")["input_ids"]
    model.train()
    before = model(input_ids=x, labels=x).loss.item()
    model.eval()
    with torch.inference_mode():
        model(input_ids=x)
    model.train()
    assert model(input_ids=x, labels=x).loss.item() == before


def _labelled_rows(tmp_path, comp_name: str, n: int, blank_e: bool = False):
    """n labelled rows of data/<comp>/train.csv (LMSYS: its shortest) as a new CSV; `blank_e` empties
    option E of the first row whose answer is not E (a row with four options)."""
    import pandas as pd

    from ..conftest import shortest_lmsys_rows

    df = pd.read_csv(DATA / comp_name / "train.csv", dtype=str, keep_default_na=False)
    df = (shortest_lmsys_rows(df) if comp_name == "lmsys" else df).head(n).copy()
    if blank_e:
        df.loc[df.index[df["answer"] != "E"][0], "E"] = ""
    path = tmp_path / f"{comp_name}_valid.csv"
    df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("comp_name", ["science_exam", "lmsys"])
def test_the_metric_from_the_eval_loss_forward_equals_the_engines(tmp_path, comp_name):
    """With `loss: answer` on a label-probability task, an evaluation takes the metric's label
    probabilities from its eval-loss forward (train/loop.py LabelScoring) instead of running the valid
    rows again through the engine. In fp32, with a LoRA adapter that changes the logits, the per-row
    probabilities equal the engine's (a Science Exam row with 4 options included: its E gets 0), and so
    do the metric and the eval loss. The engine runs only the row whose prompt training cuts otherwise
    (Science Exam's longest, at a max_length of its prompt's length). `loss: completion` leaves the
    metric to the engine."""
    import numpy as np

    from kaggle_kit import competitions
    from kaggle_kit.competitions.tasks.common import Run
    from kaggle_kit.infer import run_task
    from kaggle_kit.jobs.training import prepare_data
    from kaggle_kit.train import loop

    valid = _labelled_rows(tmp_path, comp_name, 5, blank_e=comp_name == "science_exam")
    cfg = small(tmp_path, competition=comp_name, train=str(valid), valid=str(valid), loss="answer", quant="none",
                dtype="float32", max_length=1024, eval_metric=True)  # fmt: skip
    model, tok = model_lib.build(cfg, detect("float32"))
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.02)  # a trained adapter's logits, not the base model's
    prompts = [len(e.input_ids) - 1 for e in prepare_data(cfg, tok).valid]  # each row's prompt tokens, whole
    if comp_name == "science_exam":  # the longest prompt is cut to max_length - 1 tokens, the engine's is not
        cfg = replace(cfg, max_length=max(prompts))
    split = prepare_data(cfg, tok)
    assert split.scoring is not None
    assert split.scoring.exact == [p < cfg.max_length for p in prompts]
    assert split.scoring.exact.count(False) == (1 if comp_name == "science_exam" else 0)
    comp = competitions.get(comp_name)
    df = comp.read(valid, labelled=True)
    model.eval()
    engine = comp.assemble(df, run_task(comp.work(model, tok, df, Run(max_length=cfg.max_length)), model)[0])
    seen, engine_rows = [], []
    scored, rerun = split.scoring.metric, split.scoring.engine
    fused = replace(
        split,
        scoring=replace(
            split.scoring,
            metric=lambda p: seen.append(p) or scored(p),
            engine=lambda m, t, rows: engine_rows.append(rows) or rerun(m, t, rows),
        ),
    )
    calls = []
    through_engine = replace(split, metric=lambda m, t: calls.append(1) or split.metric(m, t), scoring=None)
    got, want = loop.evaluate(model, tok, fused, cfg), loop.evaluate(model, tok, through_engine, cfg)
    assert len(calls) == 1 and len(seen) == 1
    assert engine_rows == ([[split.scoring.exact.index(False)]] if comp_name == "science_exam" else [])
    probs = seen[0]
    assert probs.shape == engine.shape == (5, len(comp.labels))
    # measured: 6e-8 (Science Exam), 3e-8 (LMSYS)
    assert np.abs(probs - engine).max() < 1e-5
    if comp_name == "science_exam":
        four = comp.masks(df).sum(axis=1) == 4
        assert four.sum() == 1 and probs[four, 4] == 0
    assert got["metric"] == pytest.approx(want["metric"], rel=1e-5)  # LMSYS log loss: 6e-7
    assert got["eval_loss"] == pytest.approx(want["eval_loss"], rel=1e-6)
    assert prepare_data(replace(cfg, loss="completion"), tok).scoring is None


def test_a_bf16_model_still_trains_after_its_fast_paths_are_probed_in_inference_mode(tmp_path):
    """Regression: the probe of a model's inference fast paths runs it in fp32 and back (infer/fast/probe.py
    in_fp32). Called inside an evaluation's inference mode (the label head of LabelScoring), it remade
    every bf16 weight as an inference tensor, and README's `train ... --set quant=none` failed at its
    first step after the step-0 evaluation ("Inference tensors cannot be saved for backward")."""
    from kaggle_kit.infer import fast

    cfg = small(tmp_path, quant="none", dtype="bfloat16")
    model, tok = model_lib.build(cfg, detect("bfloat16"))
    assert next(model.get_base_model().parameters()).dtype == torch.bfloat16
    model.eval()
    with torch.inference_mode():
        fast.paths(model)
    assert not [n for n, t in model.named_parameters() if t.is_inference()]
    model.train()
    x = tok(["The capital of France is Paris."], return_tensors="pt")["input_ids"]
    model(input_ids=x, labels=x).loss.backward()


def _weightless(tmp_path, template: str | None = None):
    """The demo model's tokenizer (its chat template replaced by `template`) and config, without weights:
    a run that loads the model from this folder fails, so an error it raises came before the load."""
    import shutil

    from kaggle_kit.models import load_tokenizer, resolve_model

    src = resolve_model("demo")
    tok = load_tokenizer(src)
    tok.chat_template = template or tok.chat_template
    folder = tmp_path / "weightless"
    tok.save_pretrained(folder)
    shutil.copy(src / "config.json", folder / "config.json")
    return folder


def test_training_refuses_a_prompt_ending_merged_with_its_labels_before_the_model_loads(tmp_path):
    """A chat template ending 'Answer: ' would teach every letter after a lone space token, a split no text
    has (infer/labels.py): training refuses it as it builds its rows, naming the ending, and before the
    model loads (the folder has no weights); the kit's own ending passes."""
    from kaggle_kit.jobs.training import prepare_data

    rows = _labelled_rows(tmp_path, "science_exam", 4)
    cfg = small(tmp_path, competition="science_exam", train=str(rows), valid=str(rows), loss="answer")
    assert len(prepare_data(cfg, model_lib.tokenizer(cfg)).train) == 4
    spaced = "{% for m in messages %}{{ m['content'] + '\\n' }}{% endfor %}Answer: "
    with pytest.raises(ConfigError, match="Answer: ") as err:
        train(replace(cfg, model=str(_weightless(tmp_path, spaced))))
    assert err.value.field == "template"
    with pytest.raises(OSError, match="model.safetensors"):  # the same run with a good template loads
        train(replace(cfg, model=str(_weightless(tmp_path / "plain"))))


def test_a_classifier_head_refuses_labels_that_are_not_one_distinct_token_each(tmp_path):
    """A classifier head (and distillation) reads a row's class from its answer token: a label of two
    tokens would share its first with another ('No' and 'No way'), and rows of both would train as one
    class. Refused naming the label, before the model loads."""
    from .test_task_types import PREPARE, SPEC

    folder = tmp_path / "comp"
    folder.mkdir()
    spec = folder / "competition.yaml"
    spec.write_text(SPEC.replace('{label: "Yes", name: machine}', '{label: "No way", name: machine}'))
    (folder / "prepare.py").write_text(PREPARE)
    essays = pd.read_csv(DATA / "llm_detect" / "train_essays.csv", dtype=str, keep_default_na=False).head(6)
    labelled = pd.DataFrame({"essay_id": [f"e{i}" for i in range(6)], "essay": essays["text"],
                             "label": ["human", "machine"] * 3})  # fmt: skip
    labelled.to_csv(folder / "labelled.csv", index=False)
    cfg = small(tmp_path, competition=str(spec), train=str(folder / "labelled.csv"), valid=None, loss="answer",
                head="classifier", valid_fraction=0.5, model=str(_weightless(tmp_path)))  # fmt: skip
    with pytest.raises(ConfigError, match="'No way' is 2 tokens") as err:
        train(cfg)
    assert err.value.field == "labels"
