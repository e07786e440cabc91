"""A competition spec: one YAML file says everything the kit needs to know about a competition.

The schema is docs/competitions.md's; `load_spec` checks a file against it and names the field that is
wrong and what would be valid ("did you mean ...?"). A spec executes no code, except a `prepare:` (or
`fields:`) function it names in a Python file next to it, for reshaping a spec cannot say (Eedi: one
prediction row per question x wrong answer; LMSYS: as many conversation turns as fit the tokens).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import ConfigError, KitError

TASKS = ("multiple_choice", "label_probabilities", "rank_candidates", "generate_text", "generate_answer")
COLUMN_KINDS = ("id", "text", "any", "optional", "json_list", "binary", "probability", "letter", "number", "integer")
METRICS = (
    "map@K", "accuracy", "log_loss", "roc_auc", "scs", "chrf", "bleu", "exact", "numeric", "perplexity",
)  # fmt: skip


class SpecError(ConfigError):
    """A spec field is missing or wrong; the message names the spec file and the field."""

    def __init__(self, path, field_name: str, message: str):
        self.path = str(path)
        super().__init__(field_name, message)
        self.args = (f"{path}: field '{field_name}': {message}",)

    def __str__(self) -> str:
        return self.args[0]


def suggest(name: str, valid) -> str:
    """' (did you mean 'x'?)' for the closest valid name, else ''."""
    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclass
class Files:
    """The competition's files, relative to the folder given with --data-dir (or absolute)."""

    test: str = "test.csv"  # rows to predict (CSV or parquet)
    train: str | None = "train.csv"  # labelled rows (training, scoring, the demo); None when there are none
    sample_submission: str | None = "sample_submission.csv"
    catalogue: str | None = None  # rank_candidates: the items to rank (misconceptions, documents)


@dataclass
class Prompt:
    """How a row becomes model input."""

    template: str  # Jinja over the row's fields (and the task's: options, shots, context, ...)
    system: str | None = None  # a system message, where the chat template takes one
    chat_format: str = "auto"  # auto (the tokenizer's chat template, else plain) / plain / alpaca


@dataclass
class Spec:
    """A competition, as its spec file says."""

    name: str  # short name: runs/<name>, `kaggle-kit predict <name>`
    task: str  # one of TASKS
    id: str | list[str]  # the id column; a list: the id is those columns joined with '_'
    columns: dict[str, str]  # input columns of the test file and what a cell must hold (COLUMN_KINDS)
    prompt: Prompt
    submission: list[str]  # the submission's columns, in order: the id, the predictions, and any column
    #   of the test file the submission repeats (AIMO's row_id)
    metric: str  # one of METRICS (map@K with K a number, e.g. map@3)
    settings: dict  # the task's own settings (the block named after the task)
    slug: str = ""  # the Kaggle competition slug (kaggle-kit data download, notebook inputs)
    description: str = ""
    files: Files = field(default_factory=Files)
    labelled_columns: dict[str, str] = field(default_factory=dict)  # extra columns of the labelled file
    group_column: str | None = None  # rows sharing this column's text stay on one side of a split
    fallback: dict = field(default_factory=dict)  # the constant submission row (column: value)
    prepare: str | None = None  # 'file.py:function' (df, labelled) -> df, reshaping read rows
    fields: str | None = None  # 'file.py:function' (df, tokenizer, max_length) -> {field: [values]}
    path: Path | None = None  # the spec file itself

    @property
    def folder(self) -> Path:
        """Where the spec lives (prepare.py and relative files are found there)."""
        return self.path.parent if self.path else Path.cwd()

    @property
    def id_column(self) -> str:
        """The submission's id column name."""
        return "_".join(self.id) if isinstance(self.id, list) else self.id


TOP = {f.name for f in fields(Spec)} - {"settings", "path"}
REQUIRED = ("name", "task", "id", "columns", "prompt", "submission", "metric")


def load_spec(path) -> Spec:
    """A Spec from a YAML file, every field checked (SpecError names the file and the field)."""
    from ..io import read_yaml_mapping

    path = Path(path)
    if not path.is_file():
        raise KitError(f"competition spec {path} not found")
    return parse_spec(read_yaml_mapping(path, lambda message: SpecError(path, "(file)", message)), path)


def parse_spec(raw: dict, path) -> Spec:
    """A Spec from a mapping (a YAML file's), every field checked but the task's own block and the
    template's names (tasks.build checks those: they depend on the task type)."""
    task = raw.get("task")
    if task not in TASKS:
        raise SpecError(path, "task", f"{task!r} is not a task type; valid: {', '.join(TASKS)}{suggest(task, TASKS)}")
    unknown = sorted(set(raw) - TOP - {task})
    if unknown:
        valid = sorted(TOP | {task})
        raise SpecError(path, unknown[0], f"unknown field{suggest(unknown[0], valid)}; valid: {', '.join(valid)}")
    for name in REQUIRED:
        if raw.get(name) in (None, "", [], {}):
            raise SpecError(path, name, "required")
    spec = Spec(
        name=_string(path, raw, "name"),
        task=task,
        id=_id(path, raw["id"]),
        columns=_columns(path, raw, "columns"),
        prompt=_block(path, raw, "prompt", Prompt),
        submission=_string_list(path, raw, "submission"),
        metric=_metric(path, raw["metric"]),
        settings=raw.get(task) or {},
        slug=str(raw.get("slug") or ""),
        description=str(raw.get("description") or ""),
        files=_block(path, raw, "files", Files) if raw.get("files") else Files(),
        labelled_columns=_columns(path, raw, "labelled_columns") if raw.get("labelled_columns") else {},
        group_column=raw.get("group_column"),
        fallback=raw.get("fallback") or {},
        prepare=_hook(path, raw, "prepare"),
        fields=_hook(path, raw, "fields"),
        path=Path(path),
    )
    if not isinstance(spec.settings, dict):
        raise SpecError(path, task, "must be a mapping of the task's settings")
    if spec.id_column not in spec.submission:
        raise SpecError(path, "submission", f"must hold the id column {spec.id_column!r}")
    if not isinstance(spec.fallback, dict) or set(spec.fallback) - set(spec.submission):
        bad = sorted(set(spec.fallback) - set(spec.submission)) if isinstance(spec.fallback, dict) else spec.fallback
        raise SpecError(path, "fallback", f"a mapping of submission column: value; not submission columns: {bad}")
    known = set(spec.columns) | set(spec.labelled_columns)
    if spec.group_column and spec.group_column not in known and not spec.prepare:
        raise SpecError(
            path, "group_column", f"{spec.group_column!r} is not a column{suggest(spec.group_column, known)}"
        )
    return spec


def _string(path, raw, name) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not value.strip():
        raise SpecError(path, name, f"must be a non-empty string, got {value!r}")
    return value


def _string_list(path, raw, name) -> list[str]:
    value = raw.get(name)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise SpecError(path, name, f"must be a list of column names, got {value!r}")
    return list(value)


def _id(path, value):
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise SpecError(path, "id", f"a column name or a list of column names, got {value!r}")


def _columns(path, raw, name) -> dict[str, str]:
    value = raw.get(name)
    if not isinstance(value, dict) or not value:
        raise SpecError(path, name, "a mapping of column: kind")
    for col, kind in value.items():
        if kind not in COLUMN_KINDS:
            raise SpecError(
                path, f"{name}.{col}", f"kind {kind!r} unknown{suggest(kind, COLUMN_KINDS)}; valid: {COLUMN_KINDS}"
            )
    return {str(k): v for k, v in value.items()}


def _block(path, raw, name, cls):
    value = raw.get(name)
    if isinstance(value, str) and cls is Prompt:
        value = {"template": value}
    if not isinstance(value, dict):
        raise SpecError(path, name, f"must be a mapping with fields {[f.name for f in fields(cls)]}")
    valid = [f.name for f in fields(cls)]
    for key in value:
        if key not in valid:
            raise SpecError(path, f"{name}.{key}", f"unknown field{suggest(key, valid)}; valid: {', '.join(valid)}")
    try:
        return cls(**value)
    except TypeError as exc:
        raise SpecError(path, name, str(exc)) from None


def _metric(path, value) -> str:
    text = str(value).strip().lower()
    if text.startswith("map@") and text[4:].isdigit() and int(text[4:]) > 0:
        return text
    if text.startswith("roc_auc_by:") or text.startswith("numeric:"):
        return str(value).strip()
    if text in METRICS and text not in ("map@K",):
        return text
    raise SpecError(
        path, "metric", f"{value!r} unknown{suggest(text, METRICS)}; valid: {', '.join(METRICS)} (map@3, map@25, ...)"
    )


def _hook(path, raw, name) -> str | None:
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or value.count(":") != 1 or not value.split(":")[0].endswith(".py"):
        raise SpecError(path, name, f"'file.py:function' (a file next to the spec), got {value!r}")
    file = Path(path).parent / value.split(":")[0]
    if not file.is_file():
        raise SpecError(path, name, f"{file} not found")
    return value


def load_hook(spec: Spec, which: str):
    """The function a spec's `prepare` / `fields` names, imported from the file next to the spec."""
    import importlib.util

    ref = getattr(spec, which)
    file, func = ref.split(":")
    module_path = spec.folder / file
    name = f"kaggle_kit_spec_{spec.name}_{module_path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, module_path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, func, None)):
        raise SpecError(spec.path, which, f"{module_path} has no function {func!r}")
    return getattr(module, func)
