"""The first GPU run's check: every CUDA path a review found wrong, on tiny random models, in one command
under ~8 minutes, writing JSON (to $OUT on the lent machine, else runs/gpu_check/).

Each step reports "ok", "failed: ..." or "skipped: ..." with its figures; one failing step does not stop
the others. The GPU is made to look like a T4 where it matters (fp16 forced). `--dry-run` runs every step
that can run on a CPU (tiny shapes), so `make test` checks the script itself.

    bash bench/gpu_check.sh            # on the lent GPU machine (see bench/gpu_check.sh for carry)
    python bench/gpu_check.py --dry-run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

STEPS = []


def step(fn):
    STEPS.append(fn)
    return fn


@step
def versions(ctx):
    import transformers

    from kaggle_kit.hardware import detect

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    for name in ("peft", "accelerate", "bitsandbytes", "vllm"):
        try:
            out[name] = __import__(name).__version__
        except Exception as exc:  # not installed, or fails to import
            out[name] = f"unavailable: {type(exc).__name__}"
    if torch.cuda.is_available():
        out.update(gpu=torch.cuda.get_device_name(0), capability=torch.cuda.get_device_capability(0))
        out["arch_list"] = torch.cuda.get_arch_list()
    profile = detect()
    out["profile"] = {"device": profile.device, "dtype": profile.dtype, "reason": profile.reason}
    return out


@step
def loads(ctx):
    """nf4 / int8 / none loads of a tiny Llama: the device map names a cuda index, the dtype is fp16."""
    from kaggle_kit.hardware import detect
    from kaggle_kit.models import load_model

    out = {}
    for quant in ("none", "nf4", "int8"):
        if quant != "none" and not ctx["cuda"]:
            out[quant] = "skipped: bitsandbytes' quantised loads are checked on CUDA"
            continue
        try:
            model, _ = load_model(str(ctx["tiny"]["llama"]), detect("float16", ctx["device"]), quant=quant)
            dev = {str(p.device) for p in model.parameters()}
            out[quant] = {"devices": sorted(dev), "hf_device_map": getattr(model, "hf_device_map", None)}
        except Exception as exc:
            out[quant] = f"failed: {type(exc).__name__}: {exc}"
    return out


@step
def exactness(ctx):
    """Choice scoring, generation and perplexity of tiny Llama / Gemma 2 / Gemma 3 in fp16 with every fast
    path on and off against plain eager fp32 on the same device and on the CPU: no NaN, same top-1."""
    from transformers import AutoModelForCausalLM

    from kaggle_kit.hardware import detect
    from kaggle_kit.infer import generation_task, perplexity_task, run_task
    from kaggle_kit.infer.primitives import choice_task
    from kaggle_kit.models import load_model
    from kaggle_kit.templates import render

    out = {}
    for fam in ("llama", "gemma2", "gemma3"):
        folder = ctx["tiny"][fam]
        ref_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
        ref_model.eval()
        res = {}
        for fast in (True, False):
            dtype = "float32" if fam != "llama" else "float16"  # the guard makes Gemma fp32 on a T4 profile
            model, tok = load_model(str(folder), detect(dtype, ctx["device"]), fast_paths=fast)
            prompts = [render(tok, f"Question {i}: {'word ' * (5 + 17 * i)}? A) yes B) no C) maybe") for i in range(6)]
            p, _ = run_task(choice_task(model, tok, prompts, ["A", "B", "C"]), model, batch_tokens=400, progress=False)
            ref = []
            for q in prompts:
                ids = tok(q, return_tensors="pt", add_special_tokens=False)["input_ids"]
                with torch.inference_mode():
                    logits = ref_model(input_ids=ids).logits[0, -1]
                ref.append(torch.softmax(logits[[tok.convert_tokens_to_ids(x) for x in "ABC"]], -1).numpy())
            ref = np.array(ref)
            texts, _ = run_task(generation_task(model, tok, prompts[:3], max_new_tokens=5), model, progress=False)
            nll, _ = run_task(perplexity_task(model, tok, prompts[:2], ["yes it is", "no"]), model, progress=False)
            res["fast" if fast else "plain"] = {
                "dtype": str(next(model.parameters()).dtype),
                "nan_rows": int(np.isnan(p).any(axis=1).sum()),
                "max_abs_vs_cpu_fp32_eager": float(np.abs(p - ref).max()),
                "top1_agree": float((p.argmax(1) == ref.argmax(1)).mean()),
                "texts_non_empty": sum(bool(t) for t in texts),
                "nll_finite": bool(all(np.isfinite(x).all() for x in nll)),
            }
        out[fam] = res
    return out


@step
def gemma2_attention(ctx):
    """Gemma 2 with soft-capped scores: eager vs sdpa (transformers refuses or drops the cap) and the kit's."""
    from transformers import AutoModelForCausalLM

    from kaggle_kit.models import attention_implementation, load_config

    folder = ctx["tiny"]["gemma2"]
    x = torch.arange(3, 40)[None].to(ctx["device"])
    res = {"kit_chooses": attention_implementation(load_config(folder), ctx["device"], fast_paths=False)}
    logits = {}
    for attn in ("eager", "sdpa"):
        try:
            m = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation=attn).to(
                ctx["device"]
            )
            with torch.inference_mode():
                logits[attn] = m(input_ids=x).logits.float().cpu()
        except Exception as exc:
            res[attn] = f"refused: {type(exc).__name__}: {str(exc)[:120]}"
    if len(logits) == 2:
        res["eager_vs_sdpa_max_abs"] = float((logits["eager"] - logits["sdpa"]).abs().max())
    return res


@step
def fp16_overflow(ctx):
    """An overflow planted in a tiny Llama run in fp16 raises NonFiniteOutput (never a fallback row), and
    the Gemma 3 guard picks fp32 for an fp16 profile."""
    from transformers import AutoModelForCausalLM

    from kaggle_kit.hardware import Profile, guard_half
    from kaggle_kit.infer.engine import NonFiniteOutput
    from kaggle_kit.infer.primitives import choice_task, run_task
    from kaggle_kit.models import load_model, load_tokenizer

    folder = Path(ctx["work"]) / "overflow"
    m = AutoModelForCausalLM.from_pretrained(ctx["tiny"]["llama"])
    with torch.no_grad():
        m.model.layers[1].mlp.down_proj.weight.mul_(1e6)
    m.save_pretrained(folder)
    load_tokenizer(ctx["tiny"]["llama"]).save_pretrained(folder)
    from kaggle_kit.hardware import detect

    model, tok = load_model(str(folder), detect("float16", ctx["device"]))
    try:
        run_task(choice_task(model, tok, ["Pick A or B? " * 8 + "Answer:\n"] * 3, ["A", "B"]), model, progress=False)
        raised = "no error"
    except NonFiniteOutput as exc:
        raised = f"NonFiniteOutput ({len(exc.rows)} rows)"
    t4 = Profile("cuda", "float16", "float16", "T4", (7, 5), 1)
    return {"planted_overflow": raised, "gemma3_on_t4_profile": guard_half(t4, "gemma3_text").dtype}


@step
def perplexity_memory(ctx):
    """Perplexity with one big batch equals one row at a time; the peak memory of the big batch."""
    from kaggle_kit.hardware import detect
    from kaggle_kit.infer import perplexity_task, run_task
    from kaggle_kit.models import load_model

    model, tok = load_model(str(ctx["tiny"]["gemma3"]), detect("float32", ctx["device"]))
    prompts = [f"Text {i}: " + "alpha beta " * (20 + 10 * i) for i in range(8)]
    outputs = ["gamma delta " * (5 + i) for i in range(8)]
    if ctx["cuda"]:
        torch.cuda.reset_peak_memory_stats()
    big, _ = run_task(perplexity_task(model, tok, prompts, outputs), model, batch_tokens=16384, progress=False)
    peak = torch.cuda.max_memory_allocated() / 2**20 if ctx["cuda"] else None
    small, _ = run_task(perplexity_task(model, tok, prompts, outputs), model, batch_tokens=64, progress=False)
    gap = max(float(np.abs(a - b).max()) for a, b in zip(big, small))
    return {"max_abs_nll_gap": gap, "peak_mib_big_batch": peak}


@step
def train_resume(ctx):
    """6 training steps (fp16 on CUDA: a loss scaler) killed after step 3 and resumed equal 6 uninterrupted."""

    def run(out, kill_after=None):
        sets = {
            "train": f"{ROOT}/data/alpaca/train.json", "model": ctx["tiny"]["llama"], "out": out, "max_steps": 6,
            "eval_every": 3, "log_every": 1, "quant": "none", "lora_r": 4, "batch_size": 2, "grad_accum": 1,
            "max_length": 128, "eval_metric": "false", "progress": "false",
            "dtype": "float16" if ctx["cuda"] else "float32",
        }  # fmt: skip
        cmd = [sys.executable, "-m", "kaggle_kit", "train", "alpaca"]
        for key, value in sets.items():
            cmd += ["--set", f"{key}={value}"]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if kill_after is not None:
            while proc.poll() is None and not (Path(out) / "last" / "trainer_state.pt").exists():
                time.sleep(0.2)
            proc.kill()
            proc.wait()
            return run(out)
        log = proc.communicate()[0]
        if proc.returncode != 0:
            raise RuntimeError(log[-2000:])
        return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]

    whole = run(Path(ctx["work"]) / "whole")
    resumed = run(Path(ctx["work"]) / "resumed", kill_after=3)
    losses = lambda h: [round(x["train_loss"], 5) for x in h if "train_loss" in x]  # noqa: E731
    return {"whole": losses(whole), "resumed": losses(resumed), "equal": losses(whole) == losses(resumed)}


@step
def shared_head(ctx):
    """Training's shared head (kaggle_kit/train/shared_head.py) under the T4 profile's fp16 autocast on
    tiny Llama and Gemma 3: its once-per-model check keeps it on, the packed forward runs, and the loss and
    LoRA gradients match the same rows unshared (fp32 on the CPU dry run)."""
    import copy
    from types import SimpleNamespace

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kaggle_kit.train import data, fast, shared_head, step

    dtype = torch.float16 if ctx["cuda"] else torch.float32
    torch.manual_seed(4)
    lengths, head = (40, 31, 36), 20
    x = torch.randint(3, 1000, (3, 40))
    x[:, :head] = x[0, :head]
    mask = (torch.arange(40) < torch.tensor(lengths)[:, None]).long()
    labels = torch.full_like(x, data.IGNORE)
    for row, end in enumerate(lengths):
        labels[row, end - 1] = x[row, end - 1]
    x, mask, labels = (t.to(ctx["device"]) for t in (x, mask, labels))
    n_items = len(lengths)
    out = {}
    for fam in ("llama", "gemma3"):
        base = AutoModelForCausalLM.from_pretrained(ctx["tiny"][fam], dtype=dtype, attn_implementation="sdpa")
        base.to(ctx["device"]).requires_grad_(False)
        lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        plain = get_peft_model(base, lora).train()
        for name, p in plain.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.05)
        shared = copy.deepcopy(plain)
        fast.fast_paths(shared, layers_checkpointed=False)
        enabled = shared_head.enable(shared)
        results, seen = [], []
        for m, shares in ((shared, True), (plain, False)):
            hook = (
                m.get_base_model()
                .get_decoder()
                .register_forward_pre_hook(
                    lambda mod, a, kw, seen=seen: seen.append(tuple(kw["input_ids"].shape)), with_kwargs=True
                )
            )
            amp = torch.autocast("cuda", dtype=torch.float16) if ctx["cuda"] else torch.autocast("cpu", enabled=False)
            with amp:
                if shares:
                    value = step.loss(m, m, SimpleNamespace(head=None), None, x, mask, labels, n_items)
                else:
                    value = data.token_loss(*data.label_logits(m, x, mask, labels), n_items)
            value.backward()
            hook.remove()
            grads = {n: p.grad.float() for n, p in m.named_parameters() if p.grad is not None}
            results.append((float(value.detach()), grads))
        (loss, grads), (want, want_grads) = results
        gap = max(float((grads[n] - g).abs().max() / g.abs().max().clamp_min(1e-12)) for n, g in want_grads.items())
        out[fam] = {
            "enabled": enabled,
            "check_kept_it_on": shared_head._CHECKED.get(shared),
            "packed_ran": (1, sum(lengths) - 2 * head) in seen,
            "loss": loss,
            "loss_rows": want,
            "loss_rel_gap": abs(loss - want) / abs(want),
            "max_grad_gap_of_tensor_max": gap,
        }
        tol = (1e-5, 1e-4) if dtype == torch.float32 else (2e-2, 5e-2)
        if not (out[fam]["check_kept_it_on"] and out[fam]["packed_ran"]) or out[fam]["loss_rel_gap"] > tol[0]:
            raise AssertionError(f"{fam}: {out[fam]}")
        if gap > tol[1]:
            raise AssertionError(f"{fam}: {out[fam]}")
    return out


@step
def t4_memory_estimate(ctx):
    """A Gemma-2-9B-shaped model (4 of its 42 layers) at 2,048 tokens: forward + backward peak with
    gradient checkpointing on and off, extrapolated to 42 layers beside ~5 GB of NF4 weights."""
    if not ctx["cuda"]:
        return "skipped: a memory estimate needs CUDA"
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(hidden_size=3584, intermediate_size=14336, num_hidden_layers=4, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=256, vocab_size=256000)  # fmt: skip
    out = {}
    for ckpt in (False, True):
        torch.cuda.empty_cache()
        model = Gemma2ForCausalLM(cfg).to(torch.float16).to("cuda")
        model.config.use_cache = False
        for p in model.parameters():
            p.requires_grad_(False)
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        x = torch.randint(0, 1000, (1, 2048), device="cuda")
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(input_ids=x, labels=x, logits_to_keep=1).loss
        loss.backward()
        per4 = (torch.cuda.max_memory_allocated() - base) / 2**30
        out["checkpointing" if ckpt else "plain"] = {
            "4_layers_gib": round(per4, 2),
            "42_layers_gib_est": round(per4 * 42 / 4, 1),
        }
        del model, loss
    return out


@step
def benches(ctx):
    """bench/infer_bench.py and bench/train_bench.py (answer loss) in fp16, a T4's profile, beside their
    plain-transformers peers, on SmolLM2-135M's shapes with random weights: the device has no model
    files, so --prepare carries SmolLM2's config and tokenizer. Speed and memory are real; agreement and
    MAP@3 mean nothing on random weights. The JSON goes to <out>/bench_results/. Dry run: the tiny
    Llama, a few rows, fp32 on the CPU."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from kaggle_kit.models import load_tokenizer

    if ctx["cuda"]:
        carried = ROOT / "runs" / "gpu_carry" / "smollm2"
        if not (carried / "config.json").is_file():
            return "skipped: runs/gpu_carry/smollm2/config.json is missing (bash bench/gpu_check.sh --prepare)"
        folder = Path(ctx["work"]) / "smollm2-135m-random-weights"
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(carried)).save_pretrained(folder)
        load_tokenizer(carried).save_pretrained(folder)
        device = ["--device", "cuda", "--dtype", "float16"]
        sizes = {"infer": ["--rows", "100", "--repeat", "2"], "train": ["--steps", "8", "--batch", "4"]}
    else:
        folder = Path(ctx["tiny"]["llama"])
        device = ["--device", "cpu", "--dtype", "float32"]
        sizes = {
            "infer": ["--rows", "4", "--gen-rows", "2", "--max-new-tokens", "4", "--repeat", "1"],
            "train": ["--steps", "3", "--batch", "2", "--quant", "none"],
        }
    sizes["train"] += ["--loss", "answer", "--repeats", "1"]
    results = Path(ctx["out"]) / "bench_results"
    out = {"model": folder.name, "weights": "random" if ctx["cuda"] else "tiny random Llama"}
    for name, argv in sizes.items():
        cmd = [sys.executable, str(ROOT / "bench" / f"{name}_bench.py"), "--model", str(folder), *device, *argv]
        try:
            r = subprocess.run([*cmd, "--results", str(results)], capture_output=True, text=True, timeout=240)
        except subprocess.TimeoutExpired:
            out[name] = "failed: over 240 s"
            continue
        written = sorted(results.glob(f"{name}_*.json"))
        if r.returncode or not written:
            out[name] = f"failed: exit {r.returncode}: {(r.stdout + r.stderr)[-1500:]}"
        else:
            out[name] = json.loads(written[-1].read_text())["rows"]
    return out


def tiny_models(work: Path) -> dict:
    """The tiny models, built with the demo tokenizer (or the carried one: runs/gpu_carry/smollm2)."""
    import tiny_models as tm
    from transformers import AutoTokenizer

    carried = ROOT / "runs" / "gpu_carry" / "smollm2"
    if carried.is_dir():
        tok = AutoTokenizer.from_pretrained(carried)
        tok.padding_side = "left"
        out = {}
        for fam in ("llama", "gemma2", "gemma3"):
            folder = work / "tiny" / fam
            tm.build(fam, tok).save_pretrained(folder)
            tok.save_pretrained(folder)
            out[fam] = folder
        return out
    return {fam: tm.save(fam, work / "tiny") for fam in ("llama", "gemma2", "gemma3")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="the CPU steps only, tiny shapes: checks the script")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "runs" / "gpu_check"))
    ap.add_argument("--only", action="append", help="run only these steps")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.dry_run
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    ctx = {"cuda": cuda, "device": "cuda" if cuda else "cpu", "work": str(work), "out": args.out}
    ctx["tiny"] = tiny_models(work)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    report = {"dry_run": args.dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": {}}
    for fn in STEPS:
        if args.only and fn.__name__ not in args.only:
            continue
        t0 = time.perf_counter()
        try:
            res = fn(ctx)
        except Exception as exc:
            res = f"failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}"
        report["steps"][fn.__name__] = {"result": res, "seconds": round(time.perf_counter() - t0, 1)}
        print(f"{fn.__name__}: {json.dumps(res, default=str)[:400]}", flush=True)
        # after every step: a run cut off by the device's time limit still brings back the steps it ran
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    failed = [
        k for k, v in report["steps"].items() if isinstance(v["result"], str) and v["result"].startswith("failed")
    ]
    print(f"{len(report['steps'])} steps, failed: {failed or 'none'} -> {Path(args.out) / 'gpu_check.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
