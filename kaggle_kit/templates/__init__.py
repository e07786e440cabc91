"""Prompt templates: how a user message becomes model input (chat formats), and the task prompt bodies.

CHAT_FORMATS is the one dict of chat formats. "auto" uses the tokenizer's own chat template (every
instruct model on Kaggle ships one) and falls back to "plain" for base models without a template.
"""

from __future__ import annotations

from .prompts import PROMPTS


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


def apply_chat_format(tokenizer, chat_format: str = "auto"):
    """Give the tokenizer the chat template of `chat_format`: 'auto' keeps its own; 'alpaca' is seed
    004's instruction format (LLaMA-Factory's alpaca template), 'plain' a bare prompt + 'Answer:' and a newline."""
    if chat_format == "auto":
        return tokenizer
    if chat_format not in CHAT_TEMPLATES:
        from ..errors import ConfigError

        raise ConfigError("chat_format", f"{chat_format!r} is not one of {['auto', *CHAT_TEMPLATES]}")
    tokenizer.chat_template = CHAT_TEMPLATES[chat_format]
    return tokenizer


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


__all__ = ["CHAT_FORMATS", "CHAT_TEMPLATES", "PROMPTS", "apply_chat_format", "render"]
