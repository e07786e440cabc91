"""LMSYS: what a spec cannot say. The conversation turns that fit the model's tokens, last turns first."""

from __future__ import annotations

TURN = "#Prompt{n}\n{prompt}\n#Response\n##Model A\n{a}\n##Model B\n{b}\n"
EMPTY = "(no response)"  # the arena logs a null turn when a model returned nothing
OVERHEAD = 96  # tokens of instructions + chat template around the turns


def turns(df, tokenizer, max_length: int) -> dict:
    """{'turns': per row, as many of its last turns as fit max_length - OVERHEAD tokens}."""
    budget = max(max_length - OVERHEAD, 64)
    rows = zip(df["prompt"], df["response_a"], df["response_b"])
    return {"turns": [_turns_text(p, a, b, tokenizer, budget) for p, a, b in rows]}


def _turns_text(prompts, resp_a, resp_b, tokenizer, budget: int) -> str:
    """Turns from the last backwards while they fit `budget` tokens; the last turn always shows."""
    n = max(len(prompts), len(resp_a), len(resp_b))

    def get(lst, i):
        return (lst[i] if i < len(lst) else None) or EMPTY

    blocks, used = [], 0
    for i in range(n - 1, -1, -1):
        block = TURN.format(n=i + 1, prompt=get(prompts, i), a=get(resp_a, i), b=get(resp_b, i))
        cost = len(tokenizer.encode(block, add_special_tokens=False))
        if blocks and used + cost > budget:
            break
        if not blocks and cost > budget:
            block = _shorten(tokenizer, get(prompts, i), get(resp_a, i), get(resp_b, i), budget, i + 1)
            cost = budget
        blocks.append(block)
        used += cost
    return "\n".join(reversed(blocks))


def _shorten(tokenizer, prompt, a, b, budget, n):
    """One turn too long for the budget: keep the head of the prompt and of each response."""
    share = max(budget // 3 - 16, 8)

    def head(text):
        ids = tokenizer.encode(text, add_special_tokens=False)
        return text if len(ids) <= share else tokenizer.decode(ids[:share]) + " ..."

    return TURN.format(n=n, prompt=head(prompt), a=head(a), b=head(b))
