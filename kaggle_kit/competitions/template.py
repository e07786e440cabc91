"""Prompt templates of competition specs: Jinja over a row's fields, rendered through a chat format.

Sandboxed (a template cannot call Python), strict (a name the row lacks is an error, not an empty
string), and whitespace as written: no block trimming, the template's final newline dropped as YAML's
`|-` drops it.
"""

from __future__ import annotations

import functools


@functools.cache
def environment():
    """The one Jinja environment of spec templates."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=False, autoescape=False)


@functools.lru_cache(maxsize=64)
def compile_template(text: str):
    """The compiled template (cached: one per spec)."""
    return environment().from_string(text)


def undeclared(text: str) -> set[str]:
    """The names a template reads from its context."""
    from jinja2 import meta

    return meta.find_undeclared_variables(environment().parse(text))


def render_rows(text: str, rows: list[dict]) -> list[str]:
    """The template rendered once per row (each a dict of field: value)."""
    template = compile_template(text)
    return [template.render(**row) for row in rows]
