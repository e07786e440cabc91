"""Training data: (prompt, completion) pairs, token ids with masked labels, length-grouped batches."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import re
import weakref
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..templates import render

log = logging.getLogger("kaggle_kit")
IGNORE = -100  # label value the loss skips


@dataclass
class Example:
    """One tokenised training row: input ids and labels (IGNORE where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]
    soft: list[float] | None = None  # a teacher's probability per competition label (distillation)


def read_alpaca(path) -> list[dict]:
    """Alpaca records (instruction, optional input, output) from a JSON array or JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    text = path.read_text(encoding="utf-8-sig")
    try:
        records = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not JSON / JSONL: {exc.msg}", row=exc.lineno) from None
    for i, rec in enumerate(records, start=1):
        for key in ("instruction", "output"):
            if not isinstance(rec, dict) or not isinstance(rec.get(key), str) or not rec[key].strip():
                raise InputError(
                    path,
                    "bad record",
                    row=i,
                    column=key,
                    expected="a non-empty string",
                    got=rec.get(key) if isinstance(rec, dict) else rec,
                )
    if not records:
        raise InputError(path, "no records")
    return records


def alpaca_pairs(records: list[dict], tokenizer) -> tuple[list[str], list[str]]:
    """(rendered prompts, outputs) for alpaca records; `input`, when present, follows the instruction."""
    prompts = [render(tokenizer, r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")) for r in records]
    return prompts, [r["output"] for r in records]


def group_split(keys: list[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, valid) row indices; rows whose normalised key is equal land on the same side.

    Keys are hashed after lower-casing and collapsing whitespace, so duplicates never straddle the split
    (a 38th-place LMSYS solution's "great CV split").
    """

    def bucket(key: str) -> float:
        norm = re.sub(r"\s+", " ", str(key).strip().lower())
        digest = hashlib.sha256(f"{seed}:{norm}".encode()).hexdigest()
        return int(digest[:8], 16) / 0xFFFFFFFF

    train, valid = [], []
    for i, key in enumerate(keys):
        (valid if bucket(key) < fraction else train).append(i)
    if not valid or not train:  # tiny data: fall back to the last rows
        cut = max(1, int(len(keys) * fraction))
        train, valid = list(range(len(keys) - cut)), list(range(len(keys) - cut, len(keys)))
    return train, valid


def tokenize(
    tokenizer, prompts: list[str], completions: list[str], max_length: int, loss: str = "completion", softs=None
) -> tuple[list[Example], int]:
    """Examples with labels on the completion only; returns (examples, rows dropped).

    Labels are placed by token positions computed here (never by searching for a response template,
    which silently drops rows when it tokenises differently in context). A long prompt keeps its end.
    loss='completion': every completion token and EOS; loss='answer': the first completion token only.
    A row is dropped (and counted) only when its completion alone does not fit. `softs` (one probability
    list per row) ride along for distillation.
    """
    examples, dropped = [], 0
    bos = tokenizer.bos_token
    for k, (prompt, completion) in enumerate(zip(prompts, completions)):
        p_ids = tokenizer(prompt, add_special_tokens=bool(bos) and not prompt.startswith(bos))["input_ids"]
        c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if loss == "completion":
            c_ids = c_ids + [tokenizer.eos_token_id]
        else:
            c_ids = c_ids[:1]
        room = max_length - len(c_ids)
        if room < 8 or not c_ids:
            dropped += 1
            continue
        p_ids = p_ids[-room:]
        soft = softs[k] if softs is not None else None
        examples.append(Example(p_ids + c_ids, [IGNORE] * len(p_ids) + c_ids, soft))
    if dropped:
        log.warning(
            "%d of %d rows dropped: their completion does not fit max_length=%d", dropped, len(prompts), max_length
        )
    return examples, dropped


def read_soft_labels(
    path, ids: list[str], labels: tuple[str, ...], columns: tuple[str, ...], id_column: str = "id"
) -> list[list[float]]:
    """A teacher's probabilities per train row, from a CSV of id + one column per label: named as the
    competition's submission columns (an LMSYS submission made on the train rows) or as the labels.
    Every train id must be there; each row must be probabilities summing to 1."""
    from ..io import Column, read_csv, read_text_csv

    head = read_text_csv(path).columns.tolist() if Path(path).is_file() else []
    cols = list(columns) if set(columns) <= set(head) and len(columns) == len(labels) else list(labels)
    df = read_csv(path, [Column(id_column, "id"), *(Column(c, "probability") for c in cols)], id_column=id_column)
    probs = df[cols].astype(float).to_numpy()
    sums = probs.sum(axis=1)
    for i in range(len(df)):
        if abs(sums[i] - 1.0) > 1e-3:
            raise InputError(path, "probabilities must sum to 1", row=i + 1, column=cols[0], got=round(sums[i], 4))
    by_id = dict(zip(df[id_column].astype(str), probs.tolist()))
    missing = [x for x in map(str, ids) if x not in by_id]
    if missing:
        raise InputError(path, f"{len(missing)} train ids have no soft labels: {missing[:10]}", column=id_column)
    return [by_id[str(x)] for x in ids]


def label_logits(model, ids, mask, labels, core=None, share: bool = True):
    """(logits, targets) at the positions whose next token is labelled in some row of the batch: logits
    (batch, K, vocab), targets (batch, K), IGNORE where a row has no label at that position.

    The lm_head, the fp32 upcast and the loss then cover K positions instead of the whole sequence
    (Science Exam, completion loss: the answer letter and EOS, 2 positions of ~250): no (batch, length,
    vocab) logits tensor, its copies or its gradient. The same tokens and weights as the model's own
    `labels=` loss, so the same loss and gradients. `model` runs the forward (DDP-wrapped or not), `core`
    is the (peft) model inside it (default: `model`). Where `share` and train/shared_head.py let them, the
    tokens the rows start with run once, and a row's unlabelled positions among the K get zeros.
    """
    from . import shared_head
    from .fast import on_labels, padding_mask

    core = model if core is None else core
    targets = labels[:, 1:]
    keep = (targets != IGNORE).any(dim=0).nonzero().squeeze(1)
    batch = _packed(core, ids, mask, labels) if share else None
    if batch is not None:  # the labelled positions' logits, in the rows' order, put where the rows have them
        found = shared_head.label_logits(model, core, batch)
        where = (targets[:, keep] != IGNORE).nonzero(as_tuple=True)
        return found.new_zeros(len(ids), len(keep), found.shape[-1]).index_put(where, found), targets[:, keep]
    with on_labels(core, keep):
        logits = model(input_ids=ids, attention_mask=padding_mask(core, mask), logits_to_keep=keep).logits
    return logits, targets[:, keep]


LOGIT_CHUNK = 1 << 24  # fp32 logit values a chunk of the loss holds (64 MB): 64 positions of a 262k vocabulary
_HEAD_EXACT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its head reproduces its logits


def labelled_hidden(model, core, ids, mask, labels, share: bool = True):
    """(hidden (N, H), targets (N,)): the final hidden state the output layer reads at each of the batch's
    N labelled positions, and the token it should predict there. The output layer itself runs on none of
    the positions (infer/fast/output_layer.py), so no (batch, length, vocabulary) logits exist; the
    tokens the rows start with run once where `share` and train/shared_head.py let them.
    `model` runs the forward (DDP-wrapped or not), `core` is the (peft) model inside it."""
    from ..infer.fast.output_layer import skipped
    from . import shared_head
    from .fast import on_labels, padding_mask

    batch = _packed(core, ids, mask, labels) if share else None
    if batch is not None:
        return shared_head.labelled_hidden(model, core, batch)

    targets = labels[:, 1:]
    keep = (targets != IGNORE).any(dim=0).nonzero().squeeze(1)
    with skipped(core.get_output_embeddings()) as caught, on_labels(core, keep):
        model(input_ids=ids, attention_mask=padding_mask(core, mask), logits_to_keep=keep)
    kept = targets[:, keep]
    rows, cols = (kept != IGNORE).nonzero(as_tuple=True)
    return caught["h"][rows, cols], kept[rows, cols]


def _packed(core, ids, mask, labels):
    """The batch packed around the tokens its rows start with (train/shared_head.py), or None where it runs
    as rows (or the model's packed forward failed its check against labelled_hidden's rows)."""
    from . import shared_head

    batch = shared_head.packed(core, ids, mask, labels)
    unshared = functools.partial(labelled_hidden, share=False)
    return batch if batch is not None and shared_head.checked(core, ids, mask, labels, batch, unshared) else None


def head_logits(core, hidden):
    """The model's logits from final hidden states: its output layer, then Gemma 2's final soft cap where
    the config sets one (in the logits' dtype, as the model's forward caps them)."""
    import torch

    logits = core.get_output_embeddings()(hidden)
    cap = getattr(core.config.get_text_config(decoder=True), "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def chunked_token_loss(core, hidden, targets, n_items: int):
    """token_loss from hidden states, LOGIT_CHUNK logit values at a time: each chunk's logits are made,
    upcast and reduced to its NLL sum, and made again in the backward pass (activation checkpointing),
    so no (tokens x vocabulary) tensor is ever whole. The same sum as token_loss, in another order.
    A loss of one chunk (loss: answer) is not made again: its recomputation would come at the start of
    backward, beside every saved activation, so keeping it costs no more at the peak; it saves a pass over
    the output layer (Gemma-3's 262k x 640: 24 ms in a profile of a 2.8 s step)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    per = chunk_rows(len(targets), max(1, LOGIT_CHUNK // core.get_output_embeddings().weight.shape[0]))
    total = hidden.new_zeros((), dtype=torch.float32)
    for k in range(0, len(targets), per):
        chunk = (core, hidden[k : k + per], targets[k : k + per])
        nll = _chunk_nll(*chunk) if len(targets) <= per else checkpoint(_chunk_nll, *chunk, use_reentrant=False)
        total = total + nll
    return total / n_items


def chunk_rows(n: int, most: int) -> int:
    """Rows a chunk of `n` holds, at most `most`, the chunks as equal as they go (65 of 64 at most: 33 + 32,
    not 64 + 1). A product of a few rows over a 262k vocabulary rounds its fp32 sums ~10x more than the
    blocked product of more rows (Gemma-3-270M, a LoRA gradient against fp64's: 34 labelled positions past
    its window, 3.8e-4 in chunks of 33 + 1, 3.1e-5 in 17 + 17, 3e-5 whole; 58 positions, 2.4e-4 in chunks
    of 7-8, 2.3e-5 in 14-15)."""
    if n <= most:
        return max(n, 1)
    return -(-n // -(-n // most))


def _chunk_nll(core, hidden, targets):
    import torch.nn.functional as F

    return F.cross_entropy(head_logits(core, hidden).float(), targets, reduction="sum")


def head_is_exact(core, ids) -> bool:
    """Whether head_logits reproduces the model's own logits (checked once per model on a few tokens of
    `ids`, in eval mode): a model that scales or transforms its logits otherwise (a logit scale, an
    unknown cap) keeps the plain path, label_logits, and the log says so once."""
    import torch

    found = _HEAD_EXACT.get(core)
    if found is not None:
        return found
    x, caught = ids[:1, :32], {}
    hook = core.get_output_embeddings().register_forward_pre_hook(lambda m, args: caught.update(h=args[0]))
    was = core.training
    core.eval()
    try:
        with torch.no_grad():
            own = core(input_ids=x, logits_to_keep=0).logits[0].float()
            mine = head_logits(core, caught["h"][0]).float()
    finally:
        hook.remove()
        core.train(was)
    half = next(core.parameters()).dtype != torch.float32 or torch.is_autocast_enabled(x.device.type)
    found = bool(torch.allclose(own, mine, rtol=1e-2 if half else 1e-5, atol=1e-2 if half else 1e-4))
    if not found:
        log.info("training computes full logits: this model's output layer alone does not give its logits")
    _HEAD_EXACT[core] = found
    return found


def class_logits(model, core, ids, mask, labels, label_ids: list[int]):
    """(logits (batch, classes), classes (batch,)) of the classification head (heads.py) at each row's answer
    position (loss: answer labels one token a row): the hidden state the output layer reads there, through
    the head. `model` runs the forward (DDP-wrapped or not), `core` is the peft model inside it."""
    import torch

    from ..heads import SCORE, head_weight

    hidden, tokens = labelled_hidden(model, core, ids, mask, labels)  # one answer position per row
    lookup = torch.full((int(max(label_ids)) + 1,), IGNORE, device=ids.device)
    lookup[torch.tensor(label_ids, device=ids.device)] = torch.arange(len(label_ids), device=ids.device)
    classes = lookup[tokens]
    # a bf16 / fp16 hidden state into the fp32 head: autocast casts in training; an evaluation has none
    hidden = hidden.to(head_weight(core).dtype)
    return getattr(core.get_base_model(), SCORE)(hidden), classes


def class_loss(logits, classes, n_items: int):
    """Sum of the rows' cross-entropy over the classes / n_items (the rows of the whole optimizer step)."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.float(), classes, reduction="sum") / n_items


def token_loss(logits, targets, n_items: int):
    """Sum of the targets' NLL (IGNORE skipped) / n_items, the labelled tokens of the whole optimizer step:
    so batch 4 x accumulation 1 and batch 1 x accumulation 4 take the same gradient."""
    import torch.nn.functional as F

    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum")
    return nll / n_items


def distill_loss(logits, targets, soft, label_ids: list[int], weight: float, n_items: int):
    """(weight * KL(teacher || model) + (1 - weight) * hard-label NLL) at each row's answer token, summed
    and divided by the answer tokens of the whole optimizer step (as the hard loss is). `logits` and
    `targets` as label_logits gives them.

    KL is over the model's full next-token distribution with the teacher's mass on the label tokens
    (zero elsewhere); with one-hot teacher probabilities it equals the hard-label NLL.
    """
    import torch

    rows, cols = (targets != IGNORE).nonzero(as_tuple=True)  # one answer position per row
    logp = torch.log_softmax(logits[rows, cols].float(), dim=-1)
    hard = -logp.gather(1, targets[rows, cols][:, None]).squeeze(1)
    q = soft[rows].to(logp.dtype)
    kl = (q * (torch.log(q.clamp_min(1e-12)) - logp[:, label_ids])).sum(dim=1)
    return (weight * kl + (1.0 - weight) * hard).sum() / n_items


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, lead: int = 1) -> list[list[int]]:
    """Length-grouped batches (sorted, chunked) whose order is shuffled with a seed per epoch, the `lead`
    largest (rows x longest row, the padded batch) first: a batch that does not fit fails at the first step,
    not hours in, and the allocator (CUDA's cache, glibc's heap) grows to the epoch's peak once instead of
    step by step (transformers' length-grouped sampler puts its longest row first for the same reason).
    `lead` is the number of processes, so each one's first batch is one of the largest."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    random.Random(seed * 1_000_003 + epoch).shuffle(batches)
    size = [len(b) * max(lengths[i] for i in b) for b in batches]
    largest = set(sorted(range(len(batches)), key=lambda k: -size[k])[:lead])
    return [batches[k] for k in sorted(largest)] + [b for k, b in enumerate(batches) if k not in largest]


def pieces(examples: list[Example], cap: int | None) -> list[list[Example]]:
    """A micro-batch cut, in order, into the fewest consecutive pieces whose padded tokens (rows x longest
    row) stay within `cap` (None: the whole micro-batch); a row longer than `cap` is a piece of its own.
    An epoch's batches hold rows of sorted lengths, so consecutive rows pad alike."""
    if cap is None:
        return [examples]
    out, cur, width = [], [], 0
    for e in examples:
        n = len(e.input_ids)
        if cur and max(width, n) * (len(cur) + 1) > cap:
            out.append(cur)
            cur, width = [], 0
        cur.append(e)
        width = max(width, n)
    return out + [cur]


def collate(examples: list[Example], pad_id: int):
    """Right-padded (input_ids, attention_mask, labels) tensors."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for j, e in enumerate(examples):
        n = len(e.input_ids)
        ids[j, :n] = torch.tensor(e.input_ids)
        mask[j, :n] = 1
        labels[j, :n] = torch.tensor(e.labels)
    return ids, mask, labels
