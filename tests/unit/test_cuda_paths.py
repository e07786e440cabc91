"""The CUDA-only paths a code review found wrong, checked on the CPU where their logic allows (the GPU
half is bench/gpu_check.sh): device maps by index, vLLM guards against a stand-in `vllm` module, the T4
training memory settings, DeepSpeed refused, the fp16 loss scaler and schedule on resume, RNG states of
another GPU count, chunked perplexity logits."""

from __future__ import annotations

import logging
import os
import re
import sys
import types

import pytest
import torch

from kaggle_kit.errors import ConfigError
from kaggle_kit.hardware import Profile

from .. import conftest


def t4(**kw):
    return Profile("cuda", "float16", "float16", "Tesla T4", (7, 5), 2, "sm_75 -> float16", **kw)


def test_a_gpu_load_names_this_process_device_by_index(monkeypatch):
    """Regression: device_map={"": "cuda"} has no index, and accelerate refuses such a 4-bit model
    under `accelerate launch --num_processes 2` (each process must name its own cuda:N)."""
    from kaggle_kit.models import device_map

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert device_map(t4()) == {"device_map": {"": 1}}
    assert device_map(Profile("cpu", "float32", "float32")) == {}


class FakeVllm:
    """A stand-in `vllm` package recording what the kit asks of it."""

    def __init__(self):
        self.llm_kwargs = None
        fake = self

        class LLM:
            def __init__(self, **kw):
                fake.llm_kwargs = kw

        self.module = types.ModuleType("vllm")
        self.module.LLM = LLM
        self.module.__version__ = "0.10.2"
        self.request = types.ModuleType("vllm.lora.request")
        self.request.LoRARequest = lambda name, n, path: (name, n, path)


@pytest.fixture
def fake_vllm(monkeypatch):
    fake = FakeVllm()
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    monkeypatch.setitem(sys.modules, "vllm.lora", types.ModuleType("vllm.lora"))
    monkeypatch.setitem(sys.modules, "vllm.lora.request", fake.request)
    monkeypatch.setattr("kaggle_kit.infer.vllm_backend.installed", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return fake


def test_vllm_is_not_available_on_a_p100_and_says_why(fake_vllm, monkeypatch):
    from kaggle_kit.infer import vllm_backend

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (6, 0))
    assert not vllm_backend.available() and "sm_60" in vllm_backend.why_not()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (7, 5))
    assert vllm_backend.available()


def test_vllm_on_a_t4_runs_the_v0_engine_and_refuses_a_v1_only_release(fake_vllm, monkeypatch):
    from kaggle_kit.infer import vllm_backend

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (7, 5))
    monkeypatch.delenv("VLLM_USE_V1", raising=False)
    vllm_backend.load("/models/llama", t4())
    assert os.environ["VLLM_USE_V1"] == "0"
    fake_vllm.module.__version__ = "0.11.0+cu128"
    assert not vllm_backend.available() and "V1 engine" in vllm_backend.why_not()
    with pytest.raises(ConfigError, match="vLLM <= 0.10.2"):
        vllm_backend.load("/models/llama", t4())
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (8, 0))  # an A100 / L4: V1 runs
    assert vllm_backend.available()


def test_vllm_scores_labels_from_masked_log_probs_on_every_release(fake_vllm, monkeypatch):
    """Regression: `logprobs_mode` (vLLM >= 0.10.1) was passed to every release, and the torch 2.6 Kaggle
    image's vLLM (0.8.5.post1) has no such argument; its V1 engine returns raw log-probs, whose top tokens
    need not hold the labels (a KeyError), so releases before 0.10.1 run V0, which returns masked ones."""
    from kaggle_kit.errors import KitError
    from kaggle_kit.infer import vllm_backend

    a100 = Profile("cuda", "bfloat16", "bfloat16", "A100", (8, 0), 1, "sm_80")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (8, 0))
    for version, mode, v1 in (("0.8.5.post1", None, "0"), ("0.10.1", "processed_logprobs", None)):
        monkeypatch.delenv("VLLM_USE_V1", raising=False)
        fake_vllm.module.__version__ = version
        vllm_backend.load("/models/llama", a100)
        assert fake_vllm.llm_kwargs.get("logprobs_mode") == mode and os.environ.get("VLLM_USE_V1") == v1
        assert fake_vllm.llm_kwargs["max_logprobs"] >= 65  # MAP's labels; vLLM's default is 20
    logprob = types.SimpleNamespace
    top = {7: logprob(logprob=-0.1), 9: logprob(logprob=-2.3)}
    assert vllm_backend.label_logprobs(top, [9, 7]) == [-2.3, -0.1]
    with pytest.raises(KitError, match=r"label tokens \[11\]"):
        vllm_backend.label_logprobs(top, [7, 11])


def test_vllm_context_holds_the_tokens_a_generation_asks_for(fake_vllm, monkeypatch, caplog):
    """Regression: vLLM's max_model_len was the prompt's max_length + 512 whatever --max-new-tokens said,
    and vLLM ends a generation at that length without an error: an AIMO run asking for 4,096 tokens of
    reasoning got about 512. Now the context holds them, within the model's positions (said when capped)."""
    from kaggle_kit import competitions
    from kaggle_kit.config import PredictConfig
    from kaggle_kit.jobs import work

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (7, 5))
    aimo = competitions.get("aimo")
    assert aimo.settings.max_new_tokens == 384  # what _load_task hands _load without --max-new-tokens
    for max_length, new, expected in ((2048, None, 2048 + 512), (2048, 4096, 2048 + 4096), (6000, 4096, 8192)):
        cfg = PredictConfig("aimo", "x.csv", model="demo", backend="vllm", max_length=max_length)
        with caplog.at_level("WARNING", logger="kaggle_kit"):
            work._load_vllm(cfg, t4(), new)
        assert fake_vllm.llm_kwargs["max_model_len"] == expected  # SmolLM2 has 8,192 positions
    assert "generations stop at 8192 tokens" in caplog.text


def test_tensor_parallel_is_refused_where_nothing_would_split_the_model():
    """Regression: --tensor-parallel 2 with the transformers backend was ignored, and with --workers 2 each
    worker (one GPU in sight) asked vLLM for two GPUs, failing after the spawn."""
    from kaggle_kit.config import PredictConfig

    with pytest.raises(ConfigError, match="only vLLM splits"):
        PredictConfig("lmsys", "x.csv", tensor_parallel=2)
    with pytest.raises(ConfigError, match="needs --workers 1"):
        PredictConfig("lmsys", "x.csv", backend="vllm", tensor_parallel=2, workers=2)
    assert PredictConfig("lmsys", "x.csv", backend="vllm", tensor_parallel=2, shard="0/2").tensor_parallel == 2


def test_vllm_refuses_gemma_in_fp16_and_int8_and_quantises_nf4_in_flight(fake_vllm, monkeypatch):
    from kaggle_kit.infer import vllm_backend

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (7, 5))
    assert "float16" in vllm_backend.check("gemma2", t4(), "nf4")
    assert "int8" in vllm_backend.check("llama", t4(), "int8")
    assert vllm_backend.check("llama", t4(), "nf4") is None
    vllm_backend.load("/models/llama", t4(), quant="nf4")
    kw = fake_vllm.llm_kwargs
    assert kw["dtype"] == "half" and kw["quantization"] == "bitsandbytes" and kw["enforce_eager"] is True


def test_backend_auto_falls_back_to_transformers_where_vllm_cannot_run(fake_vllm, monkeypatch, tmp_path, caplog):
    from kaggle_kit.config import PredictConfig
    from kaggle_kit.jobs import work

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (7, 5))
    folder = tmp_path / "gemma2"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "gemma2"}')
    auto = PredictConfig("lmsys", "x.csv", model=str(folder), backend="auto")
    assert work._vllm_can_run(auto, t4(), "auto") is False
    with pytest.raises(ConfigError, match="gemma2 in float16"):
        work._vllm_can_run(PredictConfig("lmsys", "x.csv", model=str(folder), backend="vllm"), t4(), "vllm")
    llama = tmp_path / "llama"
    conftest.tiny_llama().config.save_pretrained(llama)
    cfg = PredictConfig("lmsys", "x.csv", model=str(llama), backend="auto")
    assert work._vllm_can_run(cfg, t4(), "auto", labels=256) is True
    assert work._vllm_can_run(cfg, t4(), "auto", labels=257) is False  # vLLM would refuse after loading
    split = PredictConfig("lmsys", "x.csv", model=str(folder), backend="auto", tensor_parallel=2)
    with caplog.at_level(logging.WARNING, logger="kaggle_kit"):
        assert work._vllm_can_run(split, t4(), "auto") is False
    assert "--tensor-parallel 2 ignored" in caplog.text
    with pytest.raises(ConfigError, match="257 labels, vLLM returns at most 256"):
        work._vllm_can_run(PredictConfig("lmsys", "x.csv", model=str(llama), backend="vllm"), t4(), "vllm", 257)


def saved_adapter(monkeypatch, folder, model=None, **lora):
    """A peft LoRA adapter of `model` (the tiny Llama), saved as peft saves it; `lora` overrides LoraConfig
    fields. Made with CUDA seen as absent again (bitsandbytes, which peft imports, would reach for it)."""
    with monkeypatch.context() as m:
        m.setattr(torch.cuda, "is_available", lambda: False)
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(**{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], **lora})
        get_peft_model(model or conftest.tiny_llama(), cfg).save_pretrained(folder)
    return folder


def test_vllm_is_given_the_adapter_rank_and_refuses_what_it_would_run_otherwise(fake_vllm, monkeypatch, tmp_path):
    """Regression: max_lora_rank was 64 for every adapter (vLLM refuses a rank-128 adapter at the first
    request, after the model loaded), and an adapter vLLM drops parts of (per-module ranks) or refuses
    late (DoRA, modules saved whole, biases) reached it; now each is said before the engine starts, and
    `auto` runs it with transformers instead."""
    from kaggle_kit.config import PredictConfig
    from kaggle_kit.infer import vllm_backend
    from kaggle_kit.jobs import work

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (7, 5))
    for r, rank in ((8, 8), (12, 16), (64, 64), (128, 128)):
        plain = saved_adapter(monkeypatch, tmp_path / f"r{r}", r=r)
        assert vllm_backend.adapter_problem(plain) is None
        loaded = vllm_backend.load("/models/llama", t4(), adapter=plain)
        assert fake_vllm.llm_kwargs["max_lora_rank"] == rank and fake_vllm.llm_kwargs["enable_lora"]
        assert loaded.lora == ("adapter", 1, str(plain))
    unfit = {
        "DoRA": {"use_dora": True},
        "lm_head whole": {"modules_to_save": ["lm_head"]},
        "bias: all": {"bias": "all"},
        "rank_pattern": {"rank_pattern": {"v_proj": 4}},
        "alpha_pattern": {"alpha_pattern": {"q_proj": 32}},
    }
    model = tmp_path / "llama"
    conftest.tiny_llama().config.save_pretrained(model)
    from transformers import Phi3Config, Phi3ForCausalLM

    phi3 = Phi3ForCausalLM(Phi3Config(vocab_size=128, hidden_size=64, num_hidden_layers=2, pad_token_id=0))
    unfit["not in the base model (the first: model.layers.0.self_attn.qkv_proj)"] = {
        "model": phi3,
        "target_modules": ["qkv_proj"],
    }  # an adapter of another model class: vLLM would run the base model's numbers without a word
    for said, lora in unfit.items():
        adapter = saved_adapter(monkeypatch, tmp_path / said.split()[0].replace(":", ""), **lora)
        cfg = dict(model=str(model), adapter=str(adapter))
        assert work._vllm_can_run(PredictConfig("lmsys", "x.csv", backend="auto", **cfg), t4(), "auto") is False
        with pytest.raises(ConfigError, match=re.escape(said)):
            work._vllm_can_run(PredictConfig("lmsys", "x.csv", backend="vllm", **cfg), t4(), "vllm")
        if "base model" in said:
            continue  # found against the base model's class, which load() is not given
        assert said in vllm_backend.adapter_problem(adapter)
        with pytest.raises(ConfigError, match=f"vLLM cannot run .*{said}"):
            vllm_backend.load("/models/llama", t4(), adapter=adapter)
    plain = saved_adapter(monkeypatch, tmp_path / "plain", target_modules=["q_proj", "v_proj", "down_proj"])
    assert vllm_backend.adapter_problem(plain, conftest.tiny_llama().config) is None


def test_t4_training_keeps_the_embedding_fp16_and_checkpoints_activations(monkeypatch):
    """Regression: prepare_model_for_kbit_training upcast every non-quantised weight to fp32 (Gemma-2-9B's
    tied 256k x 3,584 embedding: +3.7 GB on a 15 GB T4), and no gradient checkpointing at 2,048 tokens."""
    from kaggle_kit.config import TrainConfig
    from kaggle_kit.train.model import checkpointing, upcast_norms

    model = conftest.tiny_llama().half()
    assert upcast_norms(model) > 0
    assert model.get_input_embeddings().weight.dtype == torch.float16
    assert model.model.norm.weight.dtype == torch.float32
    assert all(p.dtype == torch.float16 for p in model.parameters() if p.ndim == 2)
    props = types.SimpleNamespace(total_memory=15 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    cfg = TrainConfig("lmsys", "x.csv")
    assert checkpointing(cfg, t4()) is True
    assert checkpointing(cfg, Profile("cpu", "float32", "float32")) is False
    props.total_memory = 80 * 2**30
    assert checkpointing(cfg, t4()) is False
    assert checkpointing(TrainConfig("lmsys", "x.csv", gradient_checkpointing=True), Profile("cpu", "f", "f"))


def test_deepspeed_is_refused_naming_the_field():
    from kaggle_kit.config import TrainConfig

    with pytest.raises(ConfigError, match="'deepspeed'.*DDP"):
        TrainConfig("lmsys", "x.csv", deepspeed="ds_zero2.json")


def test_the_fp16_loss_scale_is_saved_with_last_and_restored(tmp_path):
    """Regression: the GradScaler state was not saved, so a resumed fp16 run restarted at scale 65536."""
    from kaggle_kit.config import TrainConfig
    from kaggle_kit.models import demo_model_dir, load_tokenizer
    from kaggle_kit.train import checkpoint

    model = conftest.tiny_llama()
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))  # makes the scale tensor
    scaler.update(512.0)
    cfg = TrainConfig("lmsys", "x.csv")
    tok = load_tokenizer(demo_model_dir())
    checkpoint.save(tmp_path / "last", model, tok, cfg, {"step": 3}, [], opt, sched, scaler)
    again = torch.amp.GradScaler("cpu", init_scale=65536.0)
    state = checkpoint.load_state(tmp_path / "last", model, opt, sched, again)
    assert state == {"step": 3} and again.get_scale() == 512.0


def test_a_two_gpu_rng_state_restores_on_one_gpu(monkeypatch):
    """Regression: torch.cuda.set_rng_state_all failed when a 2-GPU checkpoint resumed on one GPU."""
    from kaggle_kit.train import checkpoint

    state = checkpoint.rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]
    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: seen.append((int(s[0]), i)))
    checkpoint.set_rng_state(state)
    assert seen == [(0, 0)]


def test_perplexity_logits_in_chunks_equal_the_whole(demo_model_fp32, monkeypatch):
    """The NLLs are the same when the fp32 logits are made a few positions at a time (a 262k
    vocabulary's full logits would not fit a GPU: they are never whole)."""
    import numpy as np

    from kaggle_kit.infer import perplexity, primitives

    model, tok = demo_model_fp32
    prompts, outputs = ["Say something.", "Count:"], ["Hello there, how are you today?", "one two three four five"]
    whole, _ = perplexity(model, tok, prompts, outputs, progress=False)
    monkeypatch.setattr(primitives, "LOGIT_CHUNK", 3 * len(tok))  # 3 positions a chunk
    chunked, _ = perplexity(model, tok, prompts, outputs, progress=False)
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(a, b, atol=1e-6)
