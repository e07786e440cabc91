"""Every fast path equals plain transformers, on every model family: the kit's choice scoring (batched,
prefix cache, TTA views, shards, resume), generation and perplexity against eager attention in fp32, one
row at a time. Tiny random configs of eight families (tests/tiny_models.py: Gemma 2's soft caps, Mistral's
and Gemma's sliding windows, Qwen2's biases, Phi-3's fused projections, Qwen3's q/k norms, Qwen3-MoE's
routed experts) and the two real models.

Regression: Gemma 4's KV-shared layers drop all but the kept queries under an integer logits_to_keep,
after their masks are built; the kit's CPU attention read a missing mask with fewer queries than keys as
SDPA does (the first keys), so its perplexity was off by up to 1.06 nats a token on the tiny config.

Regression: the shared-prefix cache laid rows out as [prefix][padding][row], and a sliding window counts
cache slots, so padding pushed real keys out of a window one row alone keeps (Gemma-3-270M: 0.005 in
probability on a 538-token LMSYS row). Gemma 2 could not run at all (SDPA refuses soft-capping).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kaggle_kit.infer import generation_task, perplexity_task, run_task
from kaggle_kit.infer.primitives import choice_task, label_token_ids
from kaggle_kit.models import demo_model_dir
from kaggle_kit.templates import render

from .. import tiny_models
from ..conftest import DATA

LABELS = ["A", "B", "C"]
HEAD = "Read the question and answer with the letter of the best option only.\n\n"
WORDS = "the quick brown fox jumps over a lazy dog near the river bank at dawn while birds sing".split()


def questions(n: int, lengths=(2, 6, 40, 9, 70, 3, 25, 55)) -> list[str]:
    """Question texts of very different lengths: rows shorter and longer than a tiny model's window."""
    out = []
    for i in range(n):
        words = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(lengths[i % len(lengths)]))
        out.append(f"{HEAD}Question {i}: {words}?\nA) yes\nB) no\nC) maybe")
    return out


def swapped(q: str) -> str:
    """The question with options A and B swapped (a TTA view whose label order is [1, 0, 2])."""
    return q.replace("A) yes\nB) no", "A) no\nB) yes")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_models")


def load_pair(folder):
    """(the kit's model, plain eager fp32 model, tokenizer) of one model folder."""
    from transformers import AutoModelForCausalLM

    from kaggle_kit.hardware import detect
    from kaggle_kit.models import load_model

    kit, tok = load_model(str(folder), detect("float32", "cpu"))
    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    return kit, plain, tok


def kit_choice_runs(kit, tok, prompts, views, labels, tmp_path, batch_tokens):
    """The kit's probabilities four ways: one run in small batches, two shards joined, and a run killed
    after its first batch then resumed from its checkpoint; and the task's row heads (views.ViewPrefix),
    whose counters say which batches ran in two stages."""
    task = choice_task(kit, tok, prompts, labels, views=views)
    whole, _ = run_task(task, kit, batch_tokens=batch_tokens, progress=False)
    shards = np.full_like(whole, np.nan)
    for i in range(2):
        part, _ = run_task(task, kit, batch_tokens=batch_tokens, progress=False, shard=(i, 2))
        done = ~np.isnan(part).any(axis=1)
        shards[done] = part[done]
    ckpt = tmp_path / "run.ckpt.jsonl"
    step, calls = task.step, []

    def dies_after_one(batch, pad_as=None):
        if calls:
            raise KeyboardInterrupt  # a kill after the first batch was saved
        calls.append(batch)
        return step(batch, pad_as)

    task.step = dies_after_one
    with pytest.raises(KeyboardInterrupt):
        run_task(task, kit, batch_tokens=batch_tokens, progress=False, checkpoint=ckpt)
    task.step = step
    resumed, stats = run_task(task, kit, batch_tokens=batch_tokens, progress=False, checkpoint=ckpt)
    assert stats.rows_resumed == len(calls[0]) > 0
    return (whole, shards, resumed), task.parts[-1]


def check_choices(kit, plain, tok, prompts, view, labels, tmp_path, batch_tokens=160, two_stages=False):
    """Choice scoring with one TTA view (prompts, perm): the mean of the plain probabilities of both
    orders, mapped back, in every way the kit can run it; `two_stages`: some batches ran through the
    rows' shared heads (views.py)."""
    ref = plain_choice(plain, tok, prompts, labels)
    ref_view = plain_choice(plain, tok, view[0], labels)
    back = np.empty_like(ref_view)
    perms = view[1] if isinstance(view[1][0], list) else [view[1]] * len(prompts)  # one per row, or one for all
    for i, perm in enumerate(perms):
        back[i, perm] = ref_view[i]
    expected = (ref + back) / 2
    runs, heads = kit_choice_runs(kit, tok, prompts, [view], labels, tmp_path, batch_tokens)
    for got in runs:
        np.testing.assert_allclose(got, expected, atol=1e-4)
    assert heads.batches > 0 or not two_stages


def _ids(tok, text: str) -> list[int]:
    """Token ids as the kit encodes a prompt: BOS added unless the chat template already wrote it."""
    bos = tok.bos_token
    return tok(text, add_special_tokens=bool(bos) and not text.startswith(bos))["input_ids"]


def check_generation(kit, plain, tok, prompts, new_tokens=6, batch_tokens=400):
    """Greedy texts token for token, batched against one row at a time."""
    task = generation_task(kit, tok, prompts, max_new_tokens=new_tokens)
    texts, _ = run_task(task, kit, batch_tokens=batch_tokens, progress=False)
    for p, text in zip(prompts, texts):
        x = torch.tensor([_ids(tok, p)])
        with torch.inference_mode():
            out = plain.generate(input_ids=x, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        assert text == tok.decode(out[0, x.shape[1] :], skip_special_tokens=True).strip()


def check_perplexity(kit, plain, tok, prompts, outputs, batch_tokens=300):
    """Each output token's NLL."""
    nlls, _ = run_task(perplexity_task(kit, tok, prompts, outputs), kit, batch_tokens=batch_tokens, progress=False)
    for p, o, got in zip(prompts, outputs, nlls):
        pi, oi = _ids(tok, p), tok(o, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            # the logits of the positions that predict the output tokens (the last len(oi) + 1)
            logits = plain(input_ids=torch.tensor([pi + oi]), logits_to_keep=len(oi) + 1).logits[0]
            logp = torch.log_softmax(logits.float(), -1)
        np.testing.assert_allclose(got, [-logp[k, t].item() for k, t in enumerate(oi)], atol=1e-4)


def plain_choice(plain, tok, prompts, labels):
    """Label probabilities from plain transformers, one row at a time."""
    ids = label_token_ids(tok, labels)
    out = []
    for p in prompts:
        with torch.inference_mode():
            logits = plain(input_ids=torch.tensor([_ids(tok, p)]), logits_to_keep=1).logits[0, -1].float()
        out.append(torch.softmax(logits[ids], -1).numpy())
    return np.array(out)


@pytest.mark.parametrize("family", tiny_models.FAMILIES)
def test_tiny_family_equals_plain_transformers(family, tiny_dir, tmp_path):
    """Rows of 40-150 tokens around a 64-token window, with a ~40-token shared head."""
    from kaggle_kit.infer import fast

    kit, plain, tok = load_pair(tiny_models.save(family, tiny_dir))
    prompts = [render(tok, q) for q in questions(8)]
    view = ([render(tok, swapped(q)) for q in questions(8)], [1, 0, 2])
    # Gemma 4 has windows too, but its KV-shared layers take no cache
    windowed = ("gemma2", "mistral", "gemma3", "gpt_oss", "gemma3_vl")
    # the rows' heads run once where there is a cache and no window (past it: tests/unit/test_views.py)
    two_stages = family not in (*windowed, "gemma4", "qwen3_5")
    check_choices(kit, plain, tok, prompts, view, LABELS, tmp_path, two_stages=two_stages)
    check_generation(kit, plain, tok, prompts[:6])
    check_perplexity(kit, plain, tok, prompts[:4], [" ".join(WORDS[: 3 + 4 * i]) for i in range(4)])
    paths = fast.paths(kit)
    assert paths.window == (tiny_models.WINDOW if family in windowed else None)
    # on, and still exact; no prefix cache past KV-shared (Gemma 4) or linear-attention (Qwen3.5) layers
    assert paths.prefix_cache == (family not in ("gemma4", "qwen3_5")) and paths.prune_last_layer
    # the kit's CPU attention, except for gpt-oss: its sinks run eager (SDPA, where the kit hands what it does
    # not cover, would drop them; transformers refuses SDPA for it)
    assert paths.cpu_attention == (family != "gpt_oss")


@pytest.fixture(scope="module")
def gemma3_pair():
    from kaggle_kit.models import resolve_model

    return load_pair(resolve_model("demo:gemma3"))


def lmsys_rows(tok, lengths):
    """LMSYS prompts (and their A/B-swapped view) of data/lmsys/train.csv nearest to the given lengths."""
    from kaggle_kit.competitions import get

    comp = get("lmsys")
    df = comp.read(DATA / "lmsys" / "train.csv", labelled=True)
    prompts = comp.examples(df, tok, 1400)
    sizes = [len(_ids(tok, p)) for p in prompts]
    pick = [min(range(len(sizes)), key=lambda i: abs(sizes[i] - n)) for n in lengths]
    ((view, perm),) = comp.views(df.iloc[pick].reset_index(drop=True), tok, 1400)
    return [prompts[i] for i in pick], (view, perm), [sizes[i] for i in pick]


def test_gemma3_270m_on_lmsys_rows_around_its_window(gemma3_pair, tmp_path, monkeypatch):
    """The real Gemma-3-270M (512-token windows on 15 of 18 layers) on LMSYS rows of ~100-700 tokens:
    the rows of the original report (538 tokens differed by 0.005) and rows on both sides of it. Every
    batch within the window runs through the rows' shared heads, however little they save: their
    numbers are what is under test."""
    from kaggle_kit.infer.fast import views

    monkeypatch.setattr(views, "MIN_SAVED", 0.0)
    kit, plain, tok = gemma3_pair
    prompts, view, sizes = lmsys_rows(tok, (98, 338, 507, 538, 693))
    assert min(sizes) < 512 < max(sizes)
    labels = ["A", "B", "C"]
    check_choices(
        kit, plain, tok, prompts, view, labels, tmp_path, batch_tokens=4096, two_stages=True
    )  # rows share batches
    check_generation(kit, plain, tok, [prompts[0], prompts[3]], new_tokens=4, batch_tokens=2048)
    check_perplexity(kit, plain, tok, [prompts[0], prompts[4]], ["Model A", "It is a tie between both."], 2048)


def test_the_amx_sliced_attention_gives_eagers_logits_on_gemma3_rows_past_its_window(gemma3_pair, monkeypatch):
    """The attention an AMX CPU runs in bf16 (attention.SLICED: torch's flash kernel a block of queries at a
    time), here in fp32 on the real Gemma-3-270M: two left-padded LMSYS rows of ~540 and ~690 tokens, past
    its 512-token window, give eager fp32's logits at every real position; and the rows were sliced."""
    kit, plain, tok = gemma3_pair
    check_sliced(kit, plain, tok, monkeypatch)


def check_sliced(kit, plain, tok, monkeypatch):
    """`kit` on the sliced attention gives `plain`'s (eager fp32) logits on two left-padded LMSYS rows of
    ~540 and ~690 tokens, each sliced into blocks of attention.SDPA_BLOCK queries."""
    import transformers.integrations.sdpa_attention as sdpa

    from kaggle_kit.infer.engine import encode, left_pad
    from kaggle_kit.infer.fast import attention

    prompts, _, sizes = lmsys_rows(tok, (538, 693))
    assert min(sizes) > 512
    ids, mask, pos = left_pad(encode(tok, prompts, 2048), tok.pad_token_id, "cpu")
    queries, real_sdpa = [], sdpa.sdpa_attention_forward

    def counted(module, query, *args, **kwargs):
        queries.append(query.shape[2])
        return real_sdpa(module, query, *args, **kwargs)

    monkeypatch.setattr(sdpa, "sdpa_attention_forward", counted)
    was = kit.config._attn_implementation
    kit.set_attn_implementation(attention.register(sliced=True))
    try:
        with torch.inference_mode():
            ours = kit(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    finally:
        kit.set_attn_implementation(was)
    with torch.inference_mode():
        theirs = plain(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    assert attention.SDPA_BLOCK in queries and max(queries) <= attention.SDPA_BLOCK
    # the largest gap at each position first (assert_close on the real positions' copies: 10 s of SmolLM2's 17)
    gap = (ours - theirs).abs_().amax(-1)[mask.bool()].max().item()  # NaN anywhere: NaN, and fails below
    # fp32 rounding of two kernels: measured 1.4e-4 on Gemma-3's logits up to 45, 7.6e-5 on SmolLM2's
    assert gap <= 1e-3, gap


def test_smollm2_on_science_exam_rows(tmp_path, monkeypatch):
    """The real SmolLM2-135M-Instruct (Llama-style, no window) with a five-option permutation view, every
    batch through the rows' shared heads (two views of these rows save only 3-8% of their tokens, which
    the kit would run whole); and the AMX sliced attention on two long LMSYS rows."""
    from kaggle_kit.competitions import get
    from kaggle_kit.infer.fast import views

    monkeypatch.setattr(views, "MIN_SAVED", 0.0)

    kit, plain, tok = load_pair(demo_model_dir())
    comp = get("science_exam")
    df = comp.read(DATA / "science_exam" / "train.csv", labelled=True).head(6)
    prompts = comp.examples(df, tok)
    ((view, perm),) = comp.views(df, tok, n=2)
    check_choices(
        kit, plain, tok, prompts, (view, perm), list(comp.labels), tmp_path, batch_tokens=700, two_stages=True
    )
    check_sliced(kit, plain, tok, monkeypatch)


def test_an_fp16_overflow_is_an_error_and_leaves_the_fallback_submission(tiny_dir, tmp_path):
    """Regression: NaN probabilities from an fp16 overflow became fallback rows that were checkpointed as
    done. A tiny Llama whose MLP output overflows float16 (planted): predict stops with the reason, the
    submission on disk is the complete fallback, and no NaN row is in the checkpoint."""
    from transformers import AutoModelForCausalLM

    from kaggle_kit import PredictConfig, predict
    from kaggle_kit.infer.checkpoint import read_results
    from kaggle_kit.infer.engine import NonFiniteOutput

    folder = tmp_path / "overflowing"
    model = AutoModelForCausalLM.from_pretrained(tiny_models.save("llama", tiny_dir))
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(1e6)  # activations past fp16's 65,504
    model.save_pretrained(folder)
    from kaggle_kit.models import load_tokenizer

    load_tokenizer(tiny_dir / "llama").save_pretrained(folder)
    cfg = PredictConfig(
        "science_exam", str(DATA / "science_exam" / "test.csv"), model=str(folder), out=str(tmp_path / "sub.csv"),
        dtype="float16", device="cpu", progress=False,
    )  # fmt: skip
    with pytest.raises(NonFiniteOutput, match="float32"):
        predict(cfg)
    sub = (tmp_path / "sub.csv").read_text().splitlines()
    assert len(sub) == 41 and all(line.endswith("A B C") for line in sub[1:])  # the fallback, every id
    saved = read_results(cfg.checkpoint_path()) or {}
    assert all(np.isfinite(v).all() for v in saved.values())
