"""Where a plain-format prompt ends: zero-shot Science Exam rows in the kit's plain chat format (what a model
without a chat template gets) scored three ways, plain transformers, fp32, one row at a time:
- 'Answer: ' + 'X': the format before commit d9709e3, the label tokenized on its own after a trailing space;
- 'Answer:' + ' X': the token the tokenizer makes of ' X' after the colon;
- 'Answer:\\n' + 'X': the format now.
Per ending: MAP@3, the mean probability on the five letters and the gold letter's mean NLL. Writes
bench/results/answer_format_cpu[_<model>].json.

    python bench/answer_format.py [--model demo|demo:gemma3|FOLDER] [--rows 100] [--results bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

ENDINGS = {  # name: (what the prompt ends with in place of 'Answer: ', what goes before the label)
    "'Answer: ' + 'X' (before)": ("Answer: ", None),
    "'Answer:' + ' X'": ("Answer:", " "),
    "'Answer:\\n' + 'X' (now)": ("Answer:\n", ""),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--results", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    import numpy as np
    import torch
    from meta import commit, machine, model_suffix
    from train_bench import rows_file
    from transformers import AutoModelForCausalLM

    from kaggle_kit.competitions import get
    from kaggle_kit.metrics import map_at_k
    from kaggle_kit.models import load_tokenizer, resolve_model

    comp = get("science_exam")
    df = comp.read(rows_file(), labelled=True).iloc[: args.rows]
    path = resolve_model(args.model)
    tok = load_tokenizer(path)
    tok.chat_template = None  # the plain format, as for a base model without a template
    prompts = comp.examples(df, tok, 2048)
    stem = [p.removesuffix("Answer:\n") for p in prompts]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    labels = list(comp.labels)
    gold = [labels.index(a) for a in df[comp.settings.answer]]
    rows = []
    for name, (end, sep) in ENDINGS.items():
        logp = []
        for s in stem:
            head = tok.encode(s + end)
            if sep is None:  # the label on its own, as label_token_ids takes it
                ids = [tok.encode(x, add_special_tokens=False)[0] for x in labels]
            else:
                full = [tok.encode(s + end + sep + x) for x in labels]
                assert all(f[: len(head)] == head and len(f) == len(head) + 1 for f in full), (name, s[-40:])
                ids = [f[-1] for f in full]
            with torch.no_grad():
                lp = model(torch.tensor([head])).logits[0, -1].log_softmax(-1)
            logp.append(lp[ids].numpy())
        logp = np.array(logp)
        top3 = [[labels[j] for j in np.argsort(-r)[:3]] for r in logp]
        rows.append(
            {
                "ending": name,
                "label tokens": tok.convert_ids_to_tokens(ids),
                "MAP@3": map_at_k(top3, [labels[g] for g in gold], 3),
                "mass on the labels": float(np.exp(logp).sum(1).mean()),
                "gold NLL": float(-logp[np.arange(len(gold)), gold].mean()),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    meta = {
        "command": "python " + " ".join(sys.argv),
        "commit": commit(),
        "model": args.model,
        "rows": args.rows,
        "machine": machine(),
        "data": os.path.relpath(rows_file(), ROOT),
    }
    out = Path(args.results) / f"answer_format_cpu{model_suffix(args.model)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, "endings": rows}, indent=2) + "\n")
    print(out)


if __name__ == "__main__":
    main()
