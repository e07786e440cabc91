"""`kaggle-kit init DIR`: a draft competition spec read off a competition's files.

From the sample submission it takes the id column and the submission columns, and from the shape of
their values a task type and metric: probability columns summing to 1 -> label_probabilities (log
loss), one probability column -> label_probabilities (ROC AUC), space-separated letters that are test
columns -> multiple_choice (MAP@k), space-separated numbers -> rank_candidates (MAP@k), other
space-separated labels -> label_probabilities ranked (MAP@k), integers -> generate_answer (accuracy), a
few distinct labels -> label_probabilities (accuracy), free text -> generate_text. Every guess is a line
marked `# CHECK` in the draft; the draft is a valid spec as written (load_spec checks it), so the next
step is `kaggle-kit predict DIR/competition.yaml --data DIR/test.csv`.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InputError

TABLE = (".csv", ".parquet")


def find(folder: Path, stem: str) -> Path | None:
    """The competition file whose name starts with `stem` (test, train, sample_submission)."""
    hits = sorted(p for p in folder.iterdir() if p.suffix in TABLE and p.stem.startswith(stem))
    return hits[0] if hits else None


def draft(folder) -> str:
    """The text of a draft competition.yaml for the files in `folder`."""
    from ..io import read_text_csv

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a folder")
    test, sample, train = find(folder, "test"), find(folder, "sample_submission"), find(folder, "train")
    if test is None or sample is None:
        raise InputError(folder, "needs a test file and a sample_submission file (CSV or parquet)")
    known = {test, sample, train}
    others = [p for p in sorted(folder.iterdir()) if p.suffix in TABLE and p not in known]
    tdf, sdf = read_text_csv(test), read_text_csv(sample)
    ldf = read_text_csv(train) if train is not None else None
    id_col = next((c for c in sdf.columns if c in tdf.columns), sdf.columns[0])
    outputs = [c for c in sdf.columns if c not in tdf.columns or c == id_col][1:] or list(sdf.columns[1:])
    inputs = [c for c in tdf.columns if c != id_col]
    labelled = [c for c in (ldf.columns if ldf is not None else []) if c not in tdf.columns]
    task, block, metric, fallback, notes = guess(sdf, outputs, inputs, ldf, labelled)
    catalogue = others[0] if task == "rank_candidates" and others else None
    if catalogue is not None:
        cdf = read_text_csv(catalogue)
        block = [f"catalogue_id: {_key(cdf.columns[0])}   # CHECK: the catalogue's id column",
                 f"catalogue_text: {_key(cdf.columns[1])}   # CHECK: its text column", *block[2:]]  # fmt: skip
    lines = [
        f"# Draft spec written by `kaggle-kit init {folder}`: read every line marked CHECK.",
        f"name: {_name(folder)}",
        f"slug: {_name(folder).replace('_', '-')}   # CHECK: the Kaggle competition slug (its URL's last part)",
        f"task: {task}   # CHECK: guessed from the submission's values ({notes})",
        "files:",
        f"  test: {test.name}",
        f"  train: {train.name if train is not None else 'null'}",
        f"  sample_submission: {sample.name}",
        *([f"  catalogue: {catalogue.name}   # CHECK: the items ranked"] if catalogue is not None else []),
        f"id: {_key(id_col)}"
        + (
            ""
            if id_col in tdf.columns
            else "   # CHECK: not a test column: a prepare.py "
            "function must make it (docs/competitions.md, the Eedi spec)"
        ),
        "columns:   # CHECK: text = never empty, any = may be empty",
        *[f"  {_key(c)}: {_kind(tdf[c])}" for c in inputs],
    ]
    if labelled:
        lines += ["labelled_columns:", *[f"  {_key(c)}: any" for c in labelled]]
    lines += [f"{task}:", *[f"  {line}" for line in block]]
    lines += [
        "prompt:   # CHECK: what the model reads; {{ column }} inserts a cell",
        "  template: |-",
        "    " + _instruction(task),
        "",
        *[f"    {c}: {{{{ {c} }}}}" if c.isidentifier() else f"    {c}: {{{{ row['{c}'] }}}}" for c in inputs],
        *(["", "    Candidate: {{ candidate }}"] if task == "rank_candidates" else []),
        "submission: [" + ", ".join(_key(c) for c in sdf.columns) + "]",
        f"metric: {metric}   # CHECK: the competition's evaluation page names it",
    ]
    if fallback:
        lines += [
            "fallback:   # the sample submission's first row",
            *[f"  {_key(k)}: {_value(v)}" for k, v in fallback.items()],
        ]
    if ldf is not None:
        lines.append(
            f"group_column: {_key(inputs[0])}   # CHECK: rows sharing it stay on one side of a validation split"
        )
    return "\n".join(lines) + "\n"


def guess(sdf, outputs, inputs, ldf, labelled):
    """(task, task block lines, metric, fallback row, what the guess rests on)."""
    values = {c: [v for v in sdf[c].tolist() if str(v).strip()] for c in outputs}
    first = {c: (values[c][0] if values[c] else "") for c in outputs}
    probs = [c for c in outputs if values[c] and all(_is_prob(v) for v in values[c])]
    if len(outputs) >= 2 and len(probs) == len(outputs):
        classes = [f"  - {{label: {chr(65 + i)}, name: {_value(c)}}}" for i, c in enumerate(outputs)]
        block = [
            "classes:   # CHECK: the answer token (label) the prompt asks for, per class",
            *classes,
            "output: columns",
        ]
        return "label_probabilities", block, "log_loss", {}, "a probability column per class"
    col = outputs[0]
    target = labelled[0] if labelled else col
    if len(probs) == 1:
        block = [
            "classes:",
            '  - {label: "No", name: "0"}',
            '  - {label: "Yes", name: "1"}',
            f"target: {_key(target)}   # CHECK: the labelled column holding 0 / 1",
            "output: probability",
            f"column: {_key(col)}",
            'positive: "1"',
        ]
        return "label_probabilities", block, "roc_auc", {}, "one probability column"
    tokens = [str(v).split() for v in values[col]]
    if tokens and all(len(t) > 1 for t in tokens) and _label_like([x for t in tokens for x in t]):
        k = max(len(t) for t in tokens)
        flat = [x for t in tokens for x in t]
        if all(re.fullmatch(r"[A-Z]", x) and x in inputs for x in flat):
            options = [c for c in inputs if re.fullmatch(r"[A-Z]", c)]
            block = [
                f"question: {_key(next(c for c in inputs if c not in options))}   # CHECK",
                f"options: [{', '.join(options)}]",
                f"answer: {_key(target)}",
                f"top_k: {k}",
                f"output: {_key(col)}",
            ]
            return "multiple_choice", block, f"map@{k}", {col: first[col]}, f"{k} option letters per row"
        if all(re.fullmatch(r"\d+", x) for x in flat):
            block = [
                "catalogue_id: id   # CHECK: the catalogue file's id and text columns (add files.catalogue)",
                "catalogue_text: text",
                f'query: "{{{{ {_key(inputs[0])} }}}}"   # CHECK: what is embedded to find candidates',
                f"output: {_key(col)}",
                f"top_k: {k}",
                f"candidates: {max(k, 25)}",
            ]
            return "rank_candidates", block, f"map@{k}", {col: first[col]}, f"{k} ids per row"
        names = list(dict.fromkeys(flat))
        classes = [f"  - {{label: {chr(65 + i)}, name: {_value(n)}}}" for i, n in enumerate(names[:26])]
        block = ["classes:   # CHECK: every label (the sample shows only some)", *classes, f"target: {_key(target)}",
                 "output: ranked", f"column: {_key(col)}", f"top_k: {k}"]  # fmt: skip
        return "label_probabilities", block, f"map@{k}", {}, f"{k} labels per row"
    if values[col] and all(re.fullmatch(r"-?\d+", str(v).strip()) for v in values[col]):
        block = [f"answer: {_key(target)}", f"output: {_key(col)}", "extract: boxed", "samples: 1"]
        return "generate_answer", block, "accuracy", {col: first[col]}, "integer answers"
    distinct = list(dict.fromkeys(values[col]))
    if values[col] and len(distinct) <= 10 and _label_like(distinct):
        if len(distinct) == 1:  # the sample shows one class: its mirror (model_a -> model_b) or a placeholder
            only = str(distinct[0])
            distinct.append(only[:-1] + "b" if only.endswith("_a") else "OTHER")
        classes = [f"  - {{label: {chr(65 + i)}, name: {_value(n)}}}" for i, n in enumerate(distinct)]
        block = ["classes:   # CHECK: every class (the sample may show only some)", *classes,
                 f"target: {_key(target)}", "output: label", f"column: {_key(col)}"]  # fmt: skip
        return "label_probabilities", block, "accuracy", {}, "a few distinct labels"
    block = [f"target: {_key(target)}", f"output: {_key(col)}", "max_new_tokens: 64"]
    return "generate_text", block, "chrf", {col: first[col] or "unknown"}, "free text"


def _instruction(task: str) -> str:
    return {
        "multiple_choice": "Answer the question with the letter of the correct option.",
        "label_probabilities": "Read the row below and answer with one letter.",
        "rank_candidates": "Does the candidate below match this row? Reply Yes or No.",
        "generate_answer": "Solve the problem; put the final answer in \\boxed{}.",
        "generate_text": "Read the row below and write the answer.",
    }[task]


def _label_like(tokens) -> bool:
    """Tokens that look like class labels (True_Correct:NA, model_a, 17), not words of a sentence."""
    tokens = [str(x) for x in tokens]
    if not tokens or not all(re.fullmatch(r"[A-Za-z0-9_:.-]+", x) and not x.endswith(".") for x in tokens):
        return False
    return all(re.search(r"[_:\d]", x) or x.isupper() for x in tokens)


def _is_prob(v) -> bool:
    try:
        return 0.0 <= float(v) <= 1.0 and not re.fullmatch(r"\d+", str(v).strip())
    except ValueError:
        return False


def _kind(series) -> str:
    return "text" if all(str(v).strip() for v in series) else "any"


def _name(folder: Path) -> str:
    return re.sub(r"[^a-z0-9]+", "_", folder.resolve().name.lower()).strip("_") or "competition"


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else f'"{name}"'


def _value(v) -> str:
    import json

    return json.dumps(str(v))
