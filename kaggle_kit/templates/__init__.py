"""Prompt templates: how a user message becomes model input (chat formats), and the task prompt bodies.

CHAT_FORMATS is the one dict of chat formats. "auto" uses the tokenizer's own chat template (every
instruct model on Kaggle ships one) and falls back to "plain" for base models without a template.
`chat_template_kwargs` (vLLM's name) are the variables a template reads beyond the messages, such as
Qwen3's `enable_thinking`: they are bound into the tokenizer's template, so every prompt the kit renders
with that tokenizer (train, predict, serve) gets them.
"""

from __future__ import annotations

import logging

from .prompts import PROMPTS

log = logging.getLogger("kaggle_kit")
# what transformers passes every chat template itself: not a variable a caller chooses
TEMPLATE_GIVENS = {"messages", "add_generation_prompt", "tools", "documents", "bos_token", "eos_token", "pad_token"}
THINKING = "enable_thinking"  # Qwen3's and SmolLM3's switch (their templates think unless it is false)
_HINTED: set = set()  # templates the enable_thinking hint was logged for
BOUND = ("{#- kaggle_kit chat_template_kwargs -#}", "{#- end kaggle_kit chat_template_kwargs -#}")


def _tokenizer_template(tokenizer, user: str, system: str | None = None) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _plain(tokenizer, user: str, system: str | None = None) -> str:
    # Ends in a newline, as a chat turn does: 'Answer: ' would leave its space a token of its own, and a label
    # ('A') after it is a split no text has (Gemma-3-270M put 0.0000 of its mass on the five letters there)
    head = f"{system}\n\n" if system else ""
    return f"{head}{user}\n\nAnswer:\n"


def _alpaca(tokenizer, user: str, system: str | None = None) -> str:
    # A Science Exam QLoRA repo's instruction format; also what Kaiwu-SIAT wrapped zero-shot prompts in.
    head = system or (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    )
    return f"{head}\n\n### Instruction:\n{user}\n\n### Response:\n"


CHAT_FORMATS = {
    "tokenizer": _tokenizer_template,
    "plain": _plain,
    "alpaca": _alpaca,
}

# The same formats as tokenizer chat templates (Jinja), so a model trained or served in one of them
# renders it everywhere the tokenizer is used: kaggle-kit train/predict --set chat_format=alpaca.
CHAT_TEMPLATES = {
    "alpaca": (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] + '\\n\\n' }}"
        "{% elif m['role'] == 'user' %}{% if loop.first %}Below is an instruction that describes a task. Write a "
        "response that appropriately completes the request.\n\n{% endif %}"
        "### Instruction:\n{{ m['content'] }}\n\n### Response:\n"
        "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token + '\\n\\n' }}{% endif %}{% endfor %}"
    ),
    "plain": (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] + eos_token + '\\n\\n' }}"
        "{% else %}{{ m['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Answer:\\n' }}{% endif %}"
    ),
}


def apply_chat_format(tokenizer, chat_format: str = "auto", template_kwargs: dict | None = None):
    """Give the tokenizer the chat template of `chat_format`: 'auto' keeps its own; 'alpaca' is seed
    004's instruction format (LLaMA-Factory's alpaca template), 'plain' a bare prompt + 'Answer:' and a newline.
    `template_kwargs` ({'enable_thinking': False}) are bound into that template (bind_template_kwargs)."""
    if chat_format != "auto":
        if chat_format not in CHAT_TEMPLATES:
            from ..errors import ConfigError

            raise ConfigError("chat_format", f"{chat_format!r} is not one of {['auto', *CHAT_TEMPLATES]}")
        tokenizer.chat_template = CHAT_TEMPLATES[chat_format]
    if template_kwargs:
        return bind_template_kwargs(tokenizer, template_kwargs)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template not in _HINTED and THINKING in template_variables(template):
        _HINTED.add(template)  # once a process, not once per tokenizer loaded
        log.info(
            "the chat template reads %s and thinks unless it is false: prompts end where a thinking block "
            "would start; chat_template_kwargs: {%s: false} renders the model's no-thinking turn",
            *(THINKING, THINKING),
        )
    return tokenizer


def template_variables(template) -> set[str]:
    """The variables a Jinja chat template reads that a caller may set (not the messages and the other
    arguments transformers passes every template); an empty set for no template or one Jinja cannot parse."""
    import jinja2
    from jinja2 import meta

    if not isinstance(template, str):
        return set()
    try:  # transformers' own environment: its {% generation %} tag and globals (raise_exception, ...)
        from transformers.utils.chat_template_utils import _compile_jinja_template

        env = _compile_jinja_template(template).environment
    except (ImportError, AttributeError, jinja2.TemplateError):
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"])
    try:
        return meta.find_undeclared_variables(env.parse(template)) - TEMPLATE_GIVENS - set(env.globals)
    except jinja2.TemplateError:
        return set()


def bind_template_kwargs(tokenizer, values: dict):
    """Prefix the tokenizer's chat template with a `{%- set name = value -%}` per item, so it renders as
    `apply_chat_template(..., **values)` would wherever the tokenizer goes. A name the template does not
    read is a ConfigError on `chat_template_kwargs.<name>` listing the ones it does: a typo would
    otherwise change nothing, silently."""
    from ..errors import ConfigError

    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        raise ConfigError("chat_template_kwargs", "the tokenizer has no (single) chat template to pass them to")
    if template.startswith(BOUND[0]):  # bound before: bind anew to the template as it came
        template = template.split(BOUND[1], 1)[1]
    readable = template_variables(template)
    for name in values:
        if name not in readable:
            reads = f"the ones it reads: {sorted(readable)}" if readable else "it reads none beyond the messages"
            raise ConfigError(f"chat_template_kwargs.{name}", f"the chat template does not read it ({reads})")
    sets = "".join(f"{{%- set {name} = {_literal(value)} -%}}" for name, value in values.items())
    tokenizer.chat_template = BOUND[0] + sets + BOUND[1] + template
    return tokenizer


def _literal(value) -> str:
    """A Jinja literal for a scalar: true/false, a number, or a quoted string."""
    import json

    return ("true" if value else "false") if isinstance(value, bool) else json.dumps(value)


def render(
    tokenizer, user: str, system: str | None = None, chat_format: str = "auto", assistant_prefix: str = ""
) -> str:
    """The full model input for one user message, ending where the model's answer starts."""
    if chat_format == "auto":
        chat_format = "tokenizer" if getattr(tokenizer, "chat_template", None) else "plain"
    if chat_format not in CHAT_FORMATS:
        from ..errors import ConfigError

        raise ConfigError("chat_format", f"{chat_format!r} is not one of {['auto', *CHAT_FORMATS]}")
    return CHAT_FORMATS[chat_format](tokenizer, user, system) + assistant_prefix


__all__ = [
    "CHAT_FORMATS",
    "CHAT_TEMPLATES",
    "PROMPTS",
    "apply_chat_format",
    "bind_template_kwargs",
    "render",
    "template_variables",
]
