"""The task types a competition spec can name, one module each, in one explicit dict.

Each module has `Settings` (the dataclass of the spec block named after the task), `FIELDS` (the names
its prompt templates may read besides the row's columns) and a Competition subclass `Task`.
"""

from __future__ import annotations

from dataclasses import fields

from ..spec import SpecError, suggest
from . import generate_answer, generate_text, label_probabilities, multiple_choice, rank_candidates

TASK_TYPES = {
    "multiple_choice": multiple_choice,
    "label_probabilities": label_probabilities,
    "rank_candidates": rank_candidates,
    "generate_text": generate_text,
    "generate_answer": generate_answer,
}


def settings_for(spec):
    """The task block of a spec as its Settings dataclass; unknown or missing fields name the spec field."""
    module = TASK_TYPES[spec.task]
    valid = [f.name for f in fields(module.Settings)]
    for key in spec.settings:
        if key not in valid:
            raise SpecError(
                spec.path, f"{spec.task}.{key}", f"unknown field{suggest(key, valid)}; valid: {', '.join(valid)}"
            )
    try:
        settings = module.Settings(**spec.settings)
    except TypeError as exc:
        missing = str(exc).split("argument")[-1].strip(": '")
        raise SpecError(spec.path, f"{spec.task}.{missing}", f"required ({exc})") from None
    module.check_settings(spec, settings)
    return settings


def template_fields(task: str) -> set[str]:
    """Names a task's prompt templates may read besides the row's columns (`row`: all of them by name)."""
    return {*TASK_TYPES[task].FIELDS, "row"}


def build(spec):
    """The Competition of a spec, its task block and template checked against the task type."""
    settings = settings_for(spec)
    check_prompt(spec)
    return TASK_TYPES[spec.task].Task(spec, settings)


def check_prompt(spec) -> None:
    """The template parses, and every plain name it reads is a column or a field the task supplies."""
    from ..spec import SpecError, suggest
    from ..template import undeclared

    try:
        names = undeclared(spec.prompt.template)
    except Exception as exc:  # jinja2.TemplateSyntaxError and friends
        raise SpecError(spec.path, "prompt.template", f"not a valid Jinja template: {exc}") from None
    if spec.fields or spec.prepare:
        return  # a fields/prepare function may add any name; checked when the rows are rendered
    supplied = set(spec.columns) | template_fields(spec.task)
    missing = sorted(names - supplied)
    if missing:
        raise SpecError(
            spec.path, "prompt.template", f"reads {missing[0]!r}, which is not a column{suggest(missing[0], supplied)}"
        )
