"""The vLLM backend's tasks (label scoring with views, greedy generation) run end to end through `predict`,
against a stand-in for vLLM's offline API that computes with the real demo model in transformers: the
kit's wiring (label token ids, allowed tokens, log-probs, views mapped back, stop strings, the submission)
must give the submission the transformers backend gives. vLLM itself needs a GPU this CI lacks; what vLLM
computes is its own (bench/gpu_check.sh is where it runs)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


class StandInLLM:
    """vLLM's `LLM` surface the kit uses (generate with token-id prompts), computed by transformers in
    fp32: the next token's log-probs after `allowed_token_ids` (vLLM's processed log-probs), or a greedy
    continuation cut at the first stop string."""

    def __init__(self, model: str, **kwargs):
        from transformers import AutoModelForCausalLM

        self.kwargs = kwargs
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, attn_implementation="eager")
        self.model.eval()
        from kaggle_kit.models import load_tokenizer

        self.tok = load_tokenizer(Path(model))

    def generate(self, prompts, params, lora_request=None, use_tqdm=False):
        return [self._one(p["prompt_token_ids"], params) for p in prompts]

    def _one(self, ids, params):
        with torch.inference_mode():
            if params.allowed_token_ids is not None:
                logits = self.model(torch.tensor([ids])).logits[0, -1]
                masked = torch.full_like(logits, float("-inf"))
                masked[params.allowed_token_ids] = logits[params.allowed_token_ids]
                logp = torch.log_softmax(masked, dim=-1)
                top = logp.topk(params.logprobs).indices.tolist()
                seen = {t: types.SimpleNamespace(logprob=logp[t].item()) for t in top}
                return types.SimpleNamespace(outputs=[types.SimpleNamespace(logprobs=[seen], text="")])
            out = self.model.generate(torch.tensor([ids]), max_new_tokens=params.max_tokens, do_sample=False)
        text = self.tok.decode(out[0, len(ids) :], skip_special_tokens=True)
        for stop in params.stop:
            text = text.split(stop)[0]
        return types.SimpleNamespace(outputs=[types.SimpleNamespace(text=text)])


@pytest.fixture
def standin_vllm(monkeypatch):
    """A `vllm` module whose LLM is StandInLLM, seen by the kit as installed with a GPU it supports."""
    vllm = types.ModuleType("vllm")
    vllm.__version__ = "0.10.2"
    vllm.LLM = StandInLLM
    vllm.SamplingParams = lambda **kw: types.SimpleNamespace(**{"allowed_token_ids": None, "stop": [], **kw})
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setattr("kaggle_kit.infer.vllm_backend.why_not", lambda: None)


def run(competition: str, backend: str, out: Path, **kw) -> pd.DataFrame:
    from kaggle_kit import PredictConfig, predict

    data = ROOT / "data" / competition / "test.csv"
    cfg = PredictConfig(competition, str(data), out=str(out), backend=backend, device="cpu", dtype="float32", **kw)
    predict(cfg)
    return pd.read_csv(out)


def test_vllm_label_scoring_with_views_gives_the_transformers_submission(standin_vllm, tmp_path):
    """LMSYS with the A/B swap: each view's label log-probs from the engine, the swapped view mapped back
    and averaged, temperature and all, into the submission's three probabilities."""
    kw = dict(limit_rows=2, tta=2, max_length=256, fast_paths=False)  # the third row keeps the fallback
    ours = run("lmsys", "vllm", tmp_path / "vllm.csv", **kw)
    plain = run("lmsys", "transformers", tmp_path / "plain.csv", **kw)
    cols = ["winner_model_a", "winner_model_b", "winner_tie"]
    assert ours.shape == plain.shape == (3, 4) and (ours["id"] == plain["id"]).all()
    assert abs(ours[cols].to_numpy() - plain[cols].to_numpy()).max() < 1e-4
    fallback = ours[cols].to_numpy()[2]
    assert all(abs(ours[cols].to_numpy()[i] - fallback).max() > 1e-3 for i in (0, 1))  # the model's, not the prior


def test_vllm_option_rotations_give_the_transformers_answers(standin_vllm, tmp_path):
    """Science Exam with 5 option rotations: each rotation's letters mapped back to the options they show."""
    kw = dict(limit_rows=2, tta=5, fast_paths=False)
    ours = run("science_exam", "vllm", tmp_path / "vllm.csv", **kw)
    plain = run("science_exam", "transformers", tmp_path / "plain.csv", **kw)
    assert ours.equals(plain) and (ours["prediction"].head(2) != "A B C").all()  # not the fallback's order


def test_vllm_generation_gives_the_transformers_texts(standin_vllm, tmp_path):
    """Prompt Recovery: greedy generations cut at the task's stop strings, written as the submission."""
    kw = dict(limit_rows=1, max_new_tokens=8, max_length=256, fast_paths=False)
    ours = run("prompt_recovery", "vllm", tmp_path / "vllm.csv", **kw)
    plain = run("prompt_recovery", "transformers", tmp_path / "plain.csv", **kw)
    assert ours.equals(plain) and len(ours) == len(pd.read_csv(ROOT / "data" / "prompt_recovery" / "test.csv"))
    texts = ours["rewrite_prompt"]
    assert texts.iloc[0] != texts.iloc[-1]  # generated, not the fallback the other rows keep
