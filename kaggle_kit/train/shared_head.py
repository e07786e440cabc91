"""Training's shared head: the tokens every row of a batch starts with (a chat template's system turn, a
task's instruction) run through the model once a forward, not once per row.

A batch of right-padded rows is packed into one row: the head once, then each row's own tokens, no
padding (SmolLM2 on Science Exam: a 56-token head on ~250-token rows, 4 rows a batch: 16% fewer tokens).
Everything but attention works token by token (the linear layers with their LoRA terms, the norms, the
MLPs, rotary embeddings given each token's own position), so it runs on the packed tokens as it would
on the rows. Attention alone sees rows: the packed queries, keys and values are gathered back into the
right-padded (rows, width) layout, the head's into every row, and handed to transformers' SDPA path as an
unshared batch is (no mask, the causal flag, grouped key/value heads as they are); each packed token
takes its output from its own row (the head's from the first). The same numbers meet the same kernel, so
the forward is the unshared one and backward sums each head token's gradient over the rows that read it,
which is what the unshared batch's gradient is. Nothing else of the batch changes: the labelled positions
are the same, in the same order.

Off (the batch runs as rows), checked per forward: where the padding mask is kept (`fast.unmasked_padding`:
a non-causal layer, mixtures of experts), attention is not transformers' SDPA (Gemma 2's soft cap runs
eager), layers are checkpointed (their recomputation in backward would run outside the forward's
attention), dropout is drawn (other masks than plain peft draws for the same seed), a sliding window is
narrower than the batch, or the head is short (`MIN_HEAD`). And per model, once: the packed forward's
hidden states must equal the rows' on its first batch (`_agrees`), else it stays off and the log says so.
"""

from __future__ import annotations

import logging
import weakref
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger("kaggle_kit")

NAME = "kit_shared_head"  # the attention implementation a packed forward runs under
MIN_HEAD = 16  # tokens: a shorter head (a BOS, a role tag) saves a few tokens a row; where the gathers' cost
# overtakes the saving was not measured
IGNORE = -100
ATTENTION_LAYERS = ("full_attention", "sliding_attention")  # the layer types a packed forward can run
_ON: weakref.WeakSet = weakref.WeakSet()  # peft models whose batches may share their head
_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> the packed forward agreed


@dataclass
class Packed:
    """A right-padded batch packed around its shared head: `ids` and `positions` (1, N), `gather` (rows,
    width): each row's packed index at each of its positions (padding: 0), `source` (N,): where each packed
    token's attention output is in the flattened (rows x width) output, `targets` (1, N): the token each
    packed position predicts (IGNORE where none), `head`: the shared tokens."""

    ids: object
    positions: object
    gather: object
    source: object
    targets: object
    head: int


def enable(model) -> bool:
    """Let `packed` share the heads of `model`'s batches (a peft model whose layers are not checkpointed);
    False (and not let) where its right-padded rows keep the padding mask (train/fast.py), its attention is
    not transformers' SDPA, or a layer is not attention (Qwen3.5's linear-attention layers would run a
    packed row as one sequence) or attends in chunks (Llama 4)."""
    from .fast import unmasked_padding

    text = model.config.get_text_config(decoder=True)
    types = getattr(text, "layer_types", None) or []
    if getattr(text, "_attn_implementation", None) != "sdpa" or any(t not in ATTENTION_LAYERS for t in types):
        return False
    if not unmasked_padding(model):
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, rows_sdpa)
    AttentionMaskInterface.register(NAME, _no_mask)
    _ON.add(model)
    return True


def head_length(ids, mask, labels) -> int:
    """The leading tokens all rows share, ending before any row's first labelled prediction (the head's
    positions predict nothing) and leaving each row one token of its own."""
    import torch

    lengths = mask.sum(dim=1)
    shortest = int(lengths.min())
    same = (ids[:, :shortest] == ids[:1, :shortest]).all(dim=0)
    common = shortest if bool(same.all()) else int((~same).nonzero()[0])
    labelled = labels != IGNORE
    first = torch.where(labelled.any(dim=1), labelled.int().argmax(dim=1), lengths)  # first labelled token
    return max(0, min(common, int(first.min()) - 1, shortest - 1))


def packed(core, ids, mask, labels) -> Packed | None:
    """The batch packed around its shared head, or None where it runs as rows (module docstring)."""
    from .fast import draws_dropout, padding_mask

    if core not in _ON or len(ids) < 2 or padding_mask(core, mask) is not None:
        return None
    text = core.config.get_text_config(decoder=True)
    if core.training and (draws_dropout(core) or getattr(text, "attention_dropout", 0)):
        return None
    head = head_length(ids, mask, labels)
    window = _narrowest_window(core)
    if head < MIN_HEAD or (window is not None and ids.shape[1] > window):
        return None
    return pack(ids, mask, labels, head)


def pack(ids, mask, labels, head: int) -> Packed:
    """`ids`, `mask`, `labels` (rows, width; right-padded) packed: the first `head` tokens once, then each
    row's tokens after them."""
    import torch

    rows, width = ids.shape
    lengths = mask.sum(dim=1).tolist()
    device = ids.device
    cols = torch.arange(width, device=device)
    own = [n - head for n in lengths]
    start = torch.tensor([head + sum(own[:j]) for j in range(rows)], device=device)  # each row's first own token
    gather = torch.where(cols < head, cols, start[:, None] + cols - head)
    gather = torch.where(cols < torch.tensor(lengths, device=device)[:, None], gather, 0)
    real = mask.bool().clone()
    real[1:, :head] = False  # the head's tokens are the first row's
    flat = real.flatten().nonzero().squeeze(1)  # (N,) in packed order: row 0 whole, then each row's own
    nxt = torch.full_like(labels, IGNORE)
    nxt[:, :-1] = labels[:, 1:]  # the token each position predicts
    return Packed(
        ids=ids.flatten()[flat][None],
        positions=(flat % width)[None],
        gather=gather,
        source=flat,
        targets=nxt.flatten()[flat][None],
        head=head,
    )


def labelled_hidden(model, core, batch: Packed):
    """(hidden (K, H), targets (K,)) of a packed batch, as `data.labelled_hidden` gives the rows': the final
    hidden state at each labelled position, in the rows' order."""
    from ..infer.fast.output_layer import skipped

    keep = (batch.targets[0] != IGNORE).nonzero().squeeze(1)
    with skipped(core.get_output_embeddings()) as caught:
        _forward(model, core, batch, keep)
    return caught["h"][0], batch.targets[0, keep]


def label_logits(model, core, batch: Packed):
    """(K, vocab): the model's own logits at each labelled position of a packed batch, in the rows' order."""
    keep = (batch.targets[0] != IGNORE).nonzero().squeeze(1)
    return _forward(model, core, batch, keep).logits[0]


def _forward(model, core, batch: Packed, keep):
    """The packed forward, logits (or the output layer's input) at packed positions `keep` only."""
    from .fast import on_labels

    with on_labels(core, keep), _attention(core):
        return model(input_ids=batch.ids, position_ids=batch.positions, logits_to_keep=keep, kit_rows=batch)


def checked(core, ids, mask, labels, batch: Packed, rows) -> bool:
    """Whether the packed forward of `core` agrees with `rows(core, core, ids, mask, labels)`, the rows'
    (hidden, targets) (checked once per model, without grad, on this batch's first two rows); a model where
    it does not keeps its batches as rows and the log says why. `core` runs both, never a DDP wrapper
    around it: the check's extra forwards would be collective calls the other processes do not make."""
    found = _CHECKED.get(core)
    if found is None:
        width = int(mask[:2].sum(dim=1).max())
        two = ids[:2, :width], mask[:2, :width], labels[:2, :width]
        found = _CHECKED[core] = _agrees(core, two, pack(*two, batch.head), rows)
        if not found:
            log.info("training runs each row's head: this model's packed forward differs from its rows'")
    return found


def _agrees(core, two: tuple, batch: Packed, rows) -> bool:
    import torch

    with torch.no_grad():
        mine, targets = labelled_hidden(core, core, batch)
        rows, rows_targets = rows(core, core, *two)
    if mine.shape != rows.shape or not torch.equal(targets, rows_targets):
        return False
    tol = 1e-5 if mine.dtype == torch.float32 else 2e-2  # relative: the rounding of another batch shape
    return float((mine.float() - rows.float()).norm()) <= tol * float(rows.float().norm())


def rows_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, kit_rows=None, **kw):
    """transformers' attention signature. With `kit_rows` (a Packed batch): packed (1, heads, N, d) queries,
    keys and values gathered into its rows, SDPA on them as on an unshared right-padded batch, the outputs
    packed again (1, N, heads, d). Without: transformers' SDPA as it is."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kit_rows is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kw)
    kw.pop("sliding_window", None)  # narrower windows than the batch never get here (`packed`)
    # (1, heads, N, d) -> (N, heads, d) -> (rows, width, heads, d) -> (rows, heads, width, d): the strides
    # transformers' own projections hand SDPA
    q, k, v = (t[0].transpose(0, 1)[kit_rows.gather].transpose(1, 2) for t in (query, key, value))
    out, _ = sdpa_attention_forward(module, q, k, v, None, dropout, scaling, **kw)  # (rows, width, heads, d)
    return out.flatten(0, 1)[kit_rows.source][None], None


def _no_mask(*args, **kwargs):
    """The mask of a packed forward: none (rows_sdpa builds the rows; each is causal, right-padded)."""
    return None


@contextmanager
def _attention(core):
    """The block a packed forward runs in: the model's attention is rows_sdpa (NAME); restored on exit."""
    config = core.config
    was = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = was


def _narrowest_window(core) -> int | None:
    """The narrowest sliding window of any layer of `core` (None: none slides)."""
    text = core.config.get_text_config(decoder=True)
    window = getattr(text, "sliding_window", None)
    types = getattr(text, "layer_types", None)
    if not window or (types is not None and not any("sliding" in t for t in types)):
        return None
    return int(window)
