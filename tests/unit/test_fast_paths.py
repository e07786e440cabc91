"""The fast paths' one switch and their checks at load (infer/fast/), the fp16 guard and the NaN rule."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from kaggle_kit.errors import ConfigError
from kaggle_kit.hardware import Profile, check_cuda_arch, guard_half
from kaggle_kit.infer import fast
from kaggle_kit.infer.checkpoint import Checkpoint, read_results
from kaggle_kit.infer.engine import NonFiniteOutput, run_batches
from kaggle_kit.infer.fast import probe

from .. import conftest


def test_sliding_windows_and_unknown_layer_kinds_from_the_config():
    from transformers import Gemma2Config, LlamaConfig, MistralConfig, Qwen2Config

    assert fast.attention_window(LlamaConfig()) == (None, None)
    assert fast.attention_window(MistralConfig(sliding_window=4096)) == (4096, None)
    assert fast.attention_window(Gemma2Config(sliding_window=512)) == (512, None)
    assert fast.attention_window(Qwen2Config(sliding_window=4096, use_sliding_window=False)) == (None, None)
    odd = LlamaConfig()
    odd.layer_types, odd.attention_chunk_size = ["full_attention", "chunked_attention"], 8192
    window, why = fast.attention_window(odd)
    assert window is None and "chunked_attention" in why


def test_a_path_that_changes_the_numbers_is_turned_off_at_load(monkeypatch, caplog):
    """The probe compares each path with the plain computation; a broken one is switched off, once."""
    model = conftest.tiny_llama()

    @contextlib.contextmanager
    def broken(model):
        head = model.get_output_embeddings()
        saved = head.weight.data.clone()
        head.weight.data[:5] += 1.0  # what a pruning that read the wrong position would do
        try:
            yield
        finally:
            head.weight.data = saved

    monkeypatch.setattr("kaggle_kit.infer.fast.last_position.last_position_only", broken)
    with caplog.at_level("INFO", logger="kaggle_kit"):
        paths = fast.inspect(model)
    assert not paths.prune_last_layer and "prune_last_layer" in paths.off
    assert paths.prefix_cache  # the others stay on
    assert sum("prune_last_layer off" in r.message for r in caplog.records) == 1


def test_a_bf16_cpu_model_is_probed_in_fp32_and_restored_bit_for_bit():
    model = conftest.tiny_llama().to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    with probe.in_fp32(model):
        seen.append(next(model.parameters()).dtype)
    assert seen == [torch.float32]
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


def test_the_probe_keeps_fp32_inside_a_callers_autocast():
    """A training loop evaluates under its steps' bf16 autocast; the probe's fp32 bound must not meet bf16
    products there (it turned the prefix cache off: 'moves log-probabilities by 0.15')."""
    model = conftest.tiny_llama().to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        seen = []
        with probe.in_fp32(model):
            seen.append(torch.is_autocast_enabled("cpu"))
        paths = fast.inspect(model)
        assert torch.is_autocast_enabled("cpu")  # the caller's autocast is back afterwards
    assert seen == [False] and paths.off == {}


def test_the_switch_turns_every_path_off():
    model = conftest.tiny_llama()
    paths = fast.inspect(model, enabled=False)
    assert not (paths.prefix_cache or paths.prune_last_layer or paths.label_head or paths.cpu_attention)


def test_load_model_with_fast_paths_off_is_plain_transformers():
    from kaggle_kit.hardware import detect
    from kaggle_kit.models import load_model

    model, _ = load_model("demo", detect("bfloat16", "cpu"), fast_paths=False)
    paths = fast.paths(model)
    assert model.config._attn_implementation == "sdpa" and not paths.packed and not paths.prefix_cache
    assert all("forward" not in m.__dict__ for m in model.modules())  # nothing packed or patched


def gpu(capability, dtype="float16", explicit=False):
    return Profile("cuda", dtype, dtype, "Tesla T4", capability, 2, "sm_75 -> float16", explicit=explicit)


def test_gemma_in_fp16_computes_in_fp32_or_is_refused_by_name():
    """Regression: every model got fp16 below sm_80, and Gemma 2/3 overflow there to NaN rows."""
    t4 = gpu((7, 5))
    assert guard_half(t4, "llama") is t4
    guarded = guard_half(t4, "gemma2")
    assert guarded.dtype == guarded.compute_dtype == "float32" and "overflow" in guarded.reason
    assert guard_half(gpu((8, 0), "bfloat16"), "gemma3_text").dtype == "bfloat16"
    with pytest.raises(ConfigError, match="gemma3.*float16"):
        guard_half(gpu((7, 5), explicit=True), "gemma3")


def test_int8_is_refused_below_sm75_and_arch_suffixes_parse():
    pytest.importorskip("bitsandbytes")
    with pytest.raises(ConfigError, match="sm_75"):
        gpu((6, 0)).quantization("int8")
    check_cuda_arch(9, 0, ["sm_80", "sm_90", "sm_90a", "sm_100a"])  # int('90a') broke this


def test_nan_outputs_raise_and_are_never_checkpointed(tmp_path):
    """Regression: NaN probabilities (an fp16 overflow) were counted as not predicted, written as the
    fallback row and saved as done, so a resume never retried them."""
    ids = [[1] * n for n in (4, 3, 2, 1)]
    path = tmp_path / "c.jsonl"

    def step(batch, pad_as=None):
        return [np.array([np.nan, 1.0]) if i == 2 else np.array([0.5, 0.5]) for i in batch]

    with pytest.raises(NonFiniteOutput, match="NaN/inf.*float32"):
        run_batches(ids, step, batch_tokens=4, progress=False, checkpoint=Checkpoint(path, "r", every=1))
    saved = read_results(path, "r")
    assert 2 not in saved and all(np.isfinite(v).all() for v in saved.values())
