"""Which token a label is, and whether the prompts end where that token can follow them.

A label is scored as the logit of its own token (the token the tokenizer makes of the label alone,
as training tokenizes a completion alone). That reads the right number only where a prompt's tokens
end before the label: a prompt ending 'Answer: ' is a lone space token, and 'A' after it a split no
text has, since the tokenizer writes ' A' as one token (Gemma-3-270M put 0.0000 of its mass on the
five letters there, bench/answer_format.py). Such a prompt is refused, naming its ending.
"""

from __future__ import annotations

import logging

from ..errors import ConfigError

log = logging.getLogger("kaggle_kit")

TAIL = 32  # characters of a prompt's end tokenized to check it: a merge with the label reaches back one token


def label_token_ids(tokenizer, labels: list[str], prompts: list[str] | None = None) -> list[int]:
    """The single token id of each label as the model would write it first (e.g. 'A' after 'assistant\\n').

    With `prompts`, each distinct prompt ending is checked too: a ConfigError names an ending whose last
    token the tokenizer merges with a label; an ending after which a label would be another token than
    its own is logged once (chat formats that write a reply after a special token, where the label's own
    token is the one the model learnt, meet this)."""
    name = getattr(tokenizer, "name_or_path", "") or "this tokenizer"
    ids = []
    for label in labels:
        toks = tokenizer.encode(label, add_special_tokens=False)
        if len(toks) != 1:
            raise ConfigError("labels", f"label {label!r} is {len(toks)} tokens for {name}; each label must be one")
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        raise ConfigError("labels", f"labels {labels} share a token id")
    others = check_endings(tokenizer, prompts or [], labels)
    if others:
        tail, label, there, alone = others[0]
        log.warning(
            "after a prompt ending %r, %s writes label %r as %s; the kit scores the label's own token %s",
            tail[-16:], name, label, there, alone,
        )  # fmt: skip
    return ids


def check_endings(tokenizer, prompts: list[str], labels: list[str]) -> list[tuple]:
    """A ConfigError names a prompt ending whose last token the tokenizer merges with a label (the label's
    tokens after it would be a split no text has); returns (ending, label, its tokens there, its own
    tokens) for each distinct ending after which a label is other tokens than its own, without a merge."""
    tails = list(dict.fromkeys(p[-TAIL:] for p in prompts))
    if not tails:
        return []
    encode = lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]  # noqa: E731 (batched: fast)
    heads, alone = encode(tails), encode(list(labels))
    boths = encode([t + label for t in tails for label in labels])
    others = []
    for j, (tail, head) in enumerate(zip(tails, heads)):
        for i, label in enumerate(labels):
            both = boths[j * len(labels) + i]
            if both == [*head, *alone[i]]:
                continue
            if both[: len(head)] != head:
                raise ConfigError("template", _merged(tokenizer, tail, label, head, both))
            pieces = tokenizer.convert_ids_to_tokens
            others.append((tail, label, pieces(both[len(head) :]), pieces(alone[i])))
    return others


def _merged(tokenizer, tail: str, label: str, head: list[int], both: list[int]) -> str:
    """What a ConfigError says of an ending the tokenizer merges with a label."""
    name = getattr(tokenizer, "name_or_path", "") or "this tokenizer"
    last = tokenizer.convert_ids_to_tokens(head[-1:])
    joined = tokenizer.convert_ids_to_tokens(both[len(head) - 1 :])
    return (
        f"a prompt ends {tail[-16:]!r}, and {name} writes its last token {last} and label {label!r} together as "
        f"{joined}: the label's token after that prompt is a split no text has. End the prompt without "
        "trailing whitespace (the kit's own formats end 'Answer:' and a newline)"
    )
