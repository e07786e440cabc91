"""What the task types share: the run settings a task's model work takes, and checks of spec blocks."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..spec import SpecError, suggest


@dataclass
class Run:
    """How one prediction run turns rows into model work (from PredictConfig or a training evaluation)."""

    max_length: int = 2048
    tta: int = 1  # views per row
    shots: str = ""  # a block of solved examples before each row (multiple_choice)
    context: list[str] | None = None  # retrieved passages per row
    temperature: float = 1.0
    max_new_tokens: int | None = None  # None = the task's own
    extra: dict = field(default_factory=dict)  # more template fields: name -> one value per row, or one for all
    data_dir: str = "."  # the folder of the rows' file (a catalogue file is found there)
    engine: object = None  # the module whose choice_task / generation_task run the work; None = kaggle_kit.infer

    def tasks(self):
        """The engine module: kaggle_kit.infer (transformers), or infer.vllm_backend."""
        if self.engine is not None:
            return self.engine
        from ... import infer

        return infer


def need_columns(spec, block: str, names: dict, labelled: bool = False) -> None:
    """SpecError unless every `names` value (field -> column) is a column of the spec's files."""
    cols = set(spec.columns) | (set(spec.labelled_columns) if labelled else set())
    if spec.prepare:
        return  # prepare makes its own columns; checked when the rows are read
    for key, col in names.items():
        if col is not None and col not in cols:
            raise SpecError(spec.path, f"{block}.{key}", f"{col!r} is not a column{suggest(col, cols)}")


def check_template(spec, text: str, where: str) -> None:
    """A template in a task block parses and reads only columns (unless a prepare/fields function adds more)."""
    from ..template import undeclared

    try:
        names = undeclared(text)
    except Exception as exc:  # jinja2's syntax errors
        raise SpecError(spec.path, where, f"not a valid Jinja template: {exc}") from None
    if spec.prepare or spec.fields:
        return
    missing = sorted(names - set(spec.columns))
    if missing:
        raise SpecError(
            spec.path, where, f"reads {missing[0]!r}, which is not a column{suggest(missing[0], spec.columns)}"
        )
