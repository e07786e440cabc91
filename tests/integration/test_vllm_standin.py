"""The vLLM backend's tasks (label scoring with views, a LoRA adapter, greedy and sampled generation) run end
to end through `predict`, against a stand-in for vLLM's offline API that computes with the real demo model
in transformers: the kit's wiring (label token ids, allowed tokens, log-probs, views mapped back, the
adapter's request, stop strings, votes, the submission) must give the submission the transformers backend
gives. vLLM itself needs a GPU this CI lacks; what vLLM
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
        model = self.model if lora_request is None else self._adapted(lora_request.lora_path)
        return [self._one(model, p["prompt_token_ids"], params) for p in prompts]

    def _adapted(self, path: str):
        """The model with the request's LoRA adapter applied (peft, unmerged), loaded once."""
        from peft import PeftModel

        if getattr(self, "adapter", (None,))[0] != path:
            self.adapter = (path, PeftModel.from_pretrained(self.model, path).eval())
        return self.adapter[1]

    def _one(self, model, ids, params):
        with torch.inference_mode():
            if params.allowed_token_ids is not None:
                logits = model(torch.tensor([ids])).logits[0, -1]
                masked = torch.full_like(logits, float("-inf"))
                masked[params.allowed_token_ids] = logits[params.allowed_token_ids]
                logp = torch.log_softmax(masked, dim=-1)
                top = logp.topk(params.logprobs).indices.tolist()
                seen = {t: types.SimpleNamespace(logprob=logp[t].item()) for t in top}
                return types.SimpleNamespace(outputs=[types.SimpleNamespace(logprobs=[seen], text="")])
            n, sampled = getattr(params, "n", 1), getattr(params, "temperature", 0.0) > 0
            if sampled:
                torch.manual_seed(params.seed)
            out = model.generate(
                torch.tensor([ids]), max_new_tokens=params.max_tokens, num_return_sequences=n, do_sample=sampled,
                **({"temperature": params.temperature, "top_p": params.top_p} if sampled else {}),
            )  # fmt: skip
        texts = [self.tok.decode(o[len(ids) :], skip_special_tokens=True) for o in out]
        for stop in params.stop:
            texts = [t.split(stop)[0] for t in texts]
        return types.SimpleNamespace(outputs=[types.SimpleNamespace(text=t) for t in texts])


@pytest.fixture
def standin_vllm(monkeypatch):
    """A `vllm` module whose LLM is StandInLLM, seen by the kit as installed with a GPU it supports."""
    vllm = types.ModuleType("vllm")
    vllm.__version__ = "0.10.2"
    vllm.LLM = StandInLLM
    vllm.SamplingParams = lambda **kw: types.SimpleNamespace(**{"allowed_token_ids": None, "stop": [], **kw})
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = lambda name, n, path: types.SimpleNamespace(lora_name=name, lora_int_id=n, lora_path=path)
    monkeypatch.setitem(sys.modules, "vllm.lora", types.ModuleType("vllm.lora"))
    monkeypatch.setitem(sys.modules, "vllm.lora.request", request)
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
    kw = dict(limit_rows=1, tta=5, fast_paths=False)
    ours = run("science_exam", "vllm", tmp_path / "vllm.csv", **kw)
    plain = run("science_exam", "transformers", tmp_path / "plain.csv", **kw)
    assert ours.equals(plain) and ours["prediction"].iloc[0] != "A B C"  # not the fallback's order


@pytest.mark.parametrize(
    "competition,test_file", [("eedi", "test.csv"), ("map", "test.csv"), ("llm_detect", "test_essays.csv")]
)
def test_vllm_gives_the_transformers_submission_for_each_task_type(standin_vllm, tmp_path, competition, test_file):
    """rank_candidates (Eedi: retrieved misconceptions reranked by p(Yes), pairs assembled by row),
    label_probabilities (MAP's Category:Misconception labels, LLM-Detect's p(generated))."""
    from kaggle_kit import PredictConfig, predict

    subs = []
    for backend in ("vllm", "transformers"):
        out = tmp_path / f"{backend}.csv"
        data = ROOT / "data" / competition / test_file
        kw = dict(out=str(out), backend=backend, device="cpu", dtype="float32", limit_rows=2, fast_paths=False)
        assert predict(PredictConfig(competition, str(data), **kw)).predicted == 2  # the model's rows
        subs.append(pd.read_csv(out))
    ours, plain = subs
    numbers = list(ours.select_dtypes("float").columns)  # probabilities; ids and ranked lists exactly
    assert ours.drop(columns=numbers).equals(plain.drop(columns=numbers)) and len(ours) == len(plain)
    assert all(abs(ours[c] - plain[c]).max() < 1e-4 for c in numbers)


def test_vllm_runs_the_lora_adapter_the_transformers_backend_runs(standin_vllm, tmp_path):
    """A LoRA adapter (random B, so it moves every output) reaches vLLM as the request's adapter: Science
    Exam's answers with it equal the transformers backend's with it, and differ from the base model's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kaggle_kit.models import resolve_model

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(resolve_model("demo"), dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(tmp_path / "adapter")
    kw = dict(limit_rows=3, adapter=str(tmp_path / "adapter"), fast_paths=False)
    ours = run("science_exam", "vllm", tmp_path / "vllm.csv", **kw)
    plain = run("science_exam", "transformers", tmp_path / "plain.csv", **kw)
    bare = run("science_exam", "vllm", tmp_path / "bare.csv", limit_rows=3, fast_paths=False)
    assert ours.equals(plain) and not ours.head(3).equals(bare.head(3))


def test_vllm_generation_gives_the_transformers_texts(standin_vllm, tmp_path):
    """Prompt Recovery: greedy generations cut at the task's stop strings, written as the submission."""
    kw = dict(limit_rows=1, max_new_tokens=8, max_length=256, fast_paths=False)
    ours = run("prompt_recovery", "vllm", tmp_path / "vllm.csv", **kw)
    plain = run("prompt_recovery", "transformers", tmp_path / "plain.csv", **kw)
    assert ours.equals(plain) and len(ours) == len(pd.read_csv(ROOT / "data" / "prompt_recovery" / "test.csv"))
    texts = ours["rewrite_prompt"]
    assert texts.iloc[0] != texts.iloc[-1]  # generated, not the fallback the other rows keep


def test_vllm_sampled_solutions_are_voted_into_the_submission(standin_vllm, tmp_path, monkeypatch):
    """AIMO: the spec's 4 solutions a problem in one request (vLLM's n), each answer extracted and voted.
    The stand-in's texts are replaced by known ones (a 135M model solves nothing), so the vote is known."""
    from kaggle_kit import PredictConfig, predict

    texts = iter(["thus \\boxed{3}", "so \\boxed{7}.", "I give up", "\\boxed{7}"])  # the first is outvoted
    real = StandInLLM._one

    def scripted(self, model, ids, params):
        out = real(self, model, ids, params)
        assert params.n == 4 and params.temperature > 0 and len(out.outputs) == 4  # one request, n samples
        out.outputs = [types.SimpleNamespace(text=next(texts)) for _ in out.outputs]
        return out

    monkeypatch.setattr(StandInLLM, "_one", scripted)
    data, out = ROOT / "data" / "aimo" / "test.csv", tmp_path / "sub.csv"
    predict(
        PredictConfig("aimo", str(data), out=str(out), backend="vllm", device="cpu", limit_rows=1, max_new_tokens=4)
    )
    sub = pd.read_csv(out)
    assert len(sub) == len(pd.read_csv(data)) and sub["answer"].iloc[0] == 7


def test_rehearse_times_the_engine_the_run_will_use(standin_vllm, monkeypatch):
    """Regression: rehearse had no --backend, so a run on vLLM was rehearsed (and its budget judged) on
    transformers. Now the rehearsal's timing batches go through the engine named, with predict's refusals."""
    from kaggle_kit import jobs
    from kaggle_kit.config import RehearseConfig
    from kaggle_kit.errors import ConfigError

    prompts = []
    generate = StandInLLM.generate
    monkeypatch.setattr(
        StandInLLM, "generate", lambda self, p, *a, **k: prompts.extend(p) or generate(self, p, *a, **k)
    )
    data = str(ROOT / "data" / "lmsys" / "test.csv")
    kw = dict(rows=1000, max_length=256, device="cpu", dtype="float32")
    rep = jobs.rehearse(RehearseConfig("lmsys", data, backend="vllm", **kw))
    assert prompts and rep["predicted_s"] > 0 and all(v > 0 for v in rep["throughput"].values())
    with pytest.raises(ConfigError, match="tensor_parallel"):
        jobs.rehearse(RehearseConfig("lmsys", data, backend="vllm", tensor_parallel=2, workers=2, **kw))
