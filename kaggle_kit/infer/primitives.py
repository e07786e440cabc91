"""score_choices, generate and perplexity. Each is a Task (token ids + a batch `step` + how to assemble
outputs) run by engine.run_batches, so planning, sharding, checkpoints and OOM back-off are shared."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np

from ..budget import Deadline
from ..errors import ConfigError
from ..heads import head_weight, refuse_classifier
from . import fast
from .checkpoint import Checkpoint, fingerprint
from .engine import RunStats, encode, left_pad, run_batches
from .fast.label_head import LabelHead, label_probs
from .fast.last_position import last_position_only
from .fast.prefix import SharedPrefix
from .fast.views import ViewPrefix, mapped_back
from .labels import label_token_ids

MAX_LENGTH = 2048


def default_batch_tokens(model, kind: str = "score") -> int:
    """Padded tokens a batch when none is given. GPU: 16k (T4 + 9B 4-bit: activations ~2-3 GB).
    CPU: 2k, where big batches fall out of cache (SmolLM2 on 2 cores: 233 tok/s at 16k, 551 at 2k),
    except generation: 4k, so each decode step (weights read, Python overhead) serves more rows
    (16 Prompt Recovery rows x 32 new tokens, bf16: 13.0 s at 4k, 14.7 s at 2k, 13.8 s at 8k)."""
    if model.device.type == "cuda":
        return 16384
    return 4096 if kind == "generate" else 2048


@dataclass
class Task:
    """One inference job over rows: what to feed, how to run a batch, how to assemble the outputs."""

    kind: str
    ids: list[list[int]]
    step: Callable[..., list]  # step(batch, pad_as=None): outputs of rows `batch`, padded as rows `pad_as` would be
    finish: Callable[[list], object]  # results in input order (None = not reached) -> outputs
    settings: dict = field(default_factory=dict)
    extra_tokens: int = 0  # planned room per row beyond its prompt (generated tokens)
    shared: int = 0  # leading tokens common to all rows, run once through a prefix cache (not per row)
    window: int | None = None  # sliding window: a row whose slots exceed it runs whole (prefix.py)
    copies: int = 1  # rows a row becomes in a batch (sampled generations side by side)
    parts: list = field(default_factory=list)  # its caches (prefix.py, views.py): their counters say what ran

    @property
    def lengths(self) -> list[int]:
        """Tokens each row costs in a batch: its own tokens plus room for generated ones (and the shared
        prefix too where the row is too long to use it under a sliding window), times its copies."""
        fits = self.window is None
        return [
            self.copies
            * (len(r) + self.extra_tokens - (self.shared if fits or len(r) + self.extra_tokens <= self.window else 0))
            for r in self.ids
        ]

    @property
    def steps(self) -> int:
        """Forwards a batch makes: one, plus one per generated token."""
        return 1 + self.extra_tokens


def run_task(
    task: Task,
    model,
    *,
    batch_tokens: int | None = None,
    deadline: Deadline | None = None,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
    checkpoint=None,
) -> tuple[object, RunStats]:
    """Run a Task: `shard=(i, n)` computes shard i of n; `checkpoint` (a path) makes it resumable."""
    batch_tokens = batch_tokens or default_batch_tokens(model, task.kind)
    ckpt = None
    if checkpoint is not None:
        # the dtype too: an fp32 rerun after an fp16 overflow must not resume the fp16 rows
        where = (str(getattr(model, "name_or_path", "")), str(getattr(model, "dtype", "")))
        run = fingerprint(task.kind, task.settings, batch_tokens, *where, task.ids)
        ckpt = Checkpoint(
            checkpoint,
            f"{run}-{shard[0]}of{shard[1]}",
            every=1,
            meta={"kind": task.kind, "shard": list(shard), "rows": len(task.ids)},
        )
    results, stats = run_batches(
        task.ids,
        task.step,
        batch_tokens=batch_tokens,
        deadline=deadline,
        desc=task.kind,
        progress=progress,
        lengths=task.lengths,
        shard=shard,
        checkpoint=ckpt,
        steps=task.steps,
    )
    return task.finish(results), stats


def probs_from_results(results: list, n_labels: int) -> np.ndarray:
    """(N, K) probabilities; NaN rows where a result is missing."""
    probs = np.full((len(results), n_labels), np.nan)
    for i, r in enumerate(results):
        if r is not None:
            probs[i] = r
    return probs


def choice_task(
    model,
    tokenizer,
    prompts: list[str],
    labels: list[str],
    *,
    temperature: float = 1.0,
    max_length: int = MAX_LENGTH,
    views: list[tuple[list[str], list]] | None = None,
    masks=None,
    prefix_cache: bool = True,
    fp32_head: bool = True,
    prune_last_layer: bool = True,
    view_prefix: bool = True,
) -> Task:
    """Next-token probabilities over `labels`, from the last position only, the labels' logits in fp32
    (label_head.py; `fp32_head=False` keeps a half-precision model's own). `masks` ((N, K) booleans) gives
    a row's False labels probability 0 (an empty option is never predicted).

    `views` adds test-time augmentation: each (prompts, perm) is scored too, perm[j] the label index shown
    at position j, one perm for all rows or one per row (None: the row sits the view out); probabilities
    are mapped back and averaged with the main view's, so a letter-position bias cancels out. Fast paths:
    `prefix_cache` runs the tokens all prompts of a view share once (prefix.py), `view_prefix` those a row
    shares with its views (views.py), `prune_last_layer` the last layer on one position (last_position.py).
    """
    import torch

    if temperature <= 0:
        raise ConfigError("temperature", f"must be > 0, got {temperature}")
    paths = fast.paths(model)
    head = _label_head(model, tokenizer, labels, fp32_head and paths.label_head, prompts, views)
    ids = encode(tokenizer, prompts, max_length)
    extra = [(encode(tokenizer, p, max_length), list(perm)) for p, perm in views or []]
    allowed = None if masks is None else torch.as_tensor(np.asarray(masks, dtype=bool))
    cached = prefix_cache and paths.prefix_cache
    prefix = SharedPrefix(model, ids if cached else [], window=paths.window)
    view_prefixes = [SharedPrefix(model, v if cached else [], window=paths.window) for v, _ in extra]
    every = [ids] + [v for v, _ in extra]
    heads = ViewPrefix(model, every, paths.window, cached and view_prefix)
    prune = prune_last_layer and paths.prune_last_layer
    pruned = (lambda: last_position_only(model)) if prune else nullcontext
    run = _label_scorer(model, head, allowed, temperature, pruned)
    pad_id = tokenizer.pad_token_id

    def step(batch, pad_as=None):
        pad_as = pad_as or batch
        if heads.applies(pad_as):
            shown = heads.scores(batch, pad_as, pad_id, run, pruned)
        else:
            shown = [
                run(batch, shared.batch([rows[i] for i in batch], pad_id, max(len(rows[i]) for i in pad_as)))
                for rows, shared in zip(every, [prefix, *view_prefixes])
            ]
        probs, counted = shown[0], np.ones((len(batch), 1), dtype=shown[0].dtype)
        for (_, perm), view in zip(extra, shown[1:]):
            probs = probs + mapped_back(view, perm, batch, counted)
        return list(probs / counted)

    settings = _choice_settings(labels, temperature, head, [perm for _, perm in extra], heads.active, prefix.length)
    finish = lambda results: probs_from_results(results, len(labels))  # noqa: E731
    return Task(
        "score",
        ids,
        step,
        finish,
        settings,
        shared=prefix.length,
        window=paths.window,
        parts=[prefix, *view_prefixes, heads],
    )


def _choice_settings(labels, temperature, head, perms, view_heads: bool, prefix: int) -> dict:
    """What a choice task's checkpoint must match to be resumed: what changes its numbers or its rows."""
    settings = {"labels": labels, "temperature": temperature}
    if head.active:  # other numbers than the model's own logits: a checkpoint of those is not resumed
        settings["label_head"] = "classifier" if head.classifier else "fp32"
    if perms:
        settings["views"] = perms
    if view_heads:
        settings["view_heads"] = True
    if prefix:
        settings["prefix"] = prefix
    return settings


def _label_head(model, tokenizer, labels: list[str], fp32: bool, prompts: list[str], views) -> LabelHead:
    """The labels' logits: the model's classification head where its adapter has one (heads.py), else
    the label tokens' rows of the output layer (in fp32 where `fp32` and that reproduces the model), after
    checking that the prompts (and `views`' prompts) end where a label's token can follow (labels.py)."""
    classifier = head_weight(model)
    if classifier is None:
        return LabelHead(
            model, label_token_ids(tokenizer, labels, prompts + [p for v, _ in views or [] for p in v]), enabled=fp32
        )
    if classifier.shape[0] != len(labels):
        name = getattr(model, "name_or_path", "the model")
        raise ConfigError("adapter", f"{name}: its classification head has {classifier.shape[0]} classes, not {labels}")
    return LabelHead(model, list(range(len(labels))), classifier=classifier)


def _label_scorer(model, head, allowed, temperature: float, pruned):
    """run(batch, inputs): the label probabilities of model `inputs` whose rows are task rows `batch`;
    masked labels get 0. `pruned()` is the context the forward runs in (last_position.py or none)."""
    import torch

    @torch.inference_mode()
    def run(batch, inputs):
        with head.capture(), pruned():
            logits = model(**inputs, logits_to_keep=1, use_cache=False).logits
        return label_probs(head.logits(logits), None if allowed is None else allowed[batch], temperature)

    return run


def generation_task(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 32,
    stop: list[str] | None = None,
    max_length: int = MAX_LENGTH,
    prefix_cache: bool = True,
    samples: int = 1,
    temperature: float = 0.7,
    top_p: float = 0.95,
    seed: int = 0,
) -> Task:
    """Greedy continuations with the KV cache; a row stops at EOS or its first stop string (the batch
    ends when every row has stopped), and its text is cut there.

    `samples` > 1 samples that many continuations per row instead (temperature, top_p), each row's copies
    side by side in the batch; a row's output is then the list of its texts. The random state is seeded
    per batch from `seed` and the batch's first row, so a resumed or sharded run samples the same texts."""
    import torch

    if samples < 1:
        raise ConfigError("samples", f"must be >= 1, got {samples}")
    refuse_classifier(model, "generation")
    ids = encode(tokenizer, prompts, max_length)
    stop = list(stop or [])
    paths = fast.paths(model)
    prefix = SharedPrefix(
        model, ids if prefix_cache and paths.prefix_cache else [], window=paths.window, extra=max_new_tokens
    )
    until = {"stop_strings": stop, "tokenizer": tokenizer} if stop else {}

    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if samples > 1 else {"do_sample": False}

    @torch.inference_mode()
    def step(batch, pad_as=None):
        width = max(len(ids[i]) for i in pad_as or batch)
        rows = [ids[i] for i in batch for _ in range(samples)]
        inputs = prefix.batch(rows, tokenizer.pad_token_id, width)
        inputs.pop("position_ids")  # generate derives positions from the mask, padding in the middle too
        if inputs["attention_mask"].shape[1] > inputs["input_ids"].shape[1]:  # a cached prefix: generate
            # takes the whole sequence and skips what the cache already holds
            shared = torch.tensor([prefix.ids], dtype=torch.long, device=model.device).expand(len(rows), -1)
            inputs["input_ids"] = torch.cat([shared, inputs["input_ids"]], dim=1)
        width = inputs["input_ids"].shape[1]
        if samples > 1:
            torch.manual_seed(seed * 1_000_003 + min(batch))
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **sampling,
            **until,
        )
        texts = [_cut(t, stop) for t in tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)]
        return texts if samples == 1 else [texts[k * samples : (k + 1) * samples] for k in range(len(batch))]

    settings = {"max_new_tokens": max_new_tokens, "stop": stop}
    if samples > 1:
        settings.update(samples=samples, temperature=temperature, top_p=top_p, seed=seed)
    if prefix.length:
        settings["prefix"] = prefix.length
    task = Task(
        "generate", ids, step, list, settings, extra_tokens=max_new_tokens, shared=prefix.length, window=paths.window
    )
    task.copies = samples
    return task


def _cut(text: str, stop: list[str]) -> str:
    for s in stop:
        at = text.find(s)
        if at >= 0:
            text = text[:at]
    return text.strip()


LOGIT_CHUNK = 1 << 26  # fp32 logit values per chunk (256 MB): 256 positions of a 262k vocabulary


def perplexity_task(model, tokenizer, prompts: list[str], outputs: list[str], *, max_length: int = MAX_LENGTH) -> Task:
    """Per example, the NLL of each output token given prompt + earlier output tokens (the NTU ADL
    homework's metric). Logits are computed only at the positions that predict an output token (rows are
    left-padded, so those are each row's last ones) and turned into NLLs a chunk of positions at a time:
    no (batch x length x vocabulary) tensor, which for a 262k vocabulary would not fit a GPU."""
    import torch

    refuse_classifier(model, "perplexity")
    prompt_ids = encode(tokenizer, prompts, max_length)
    rows, n_out = [], []
    for p, o in zip(prompt_ids, outputs):
        o = tokenizer(o, add_special_tokens=False)["input_ids"][: max_length - 1]
        if not o:
            raise ConfigError("outputs", "an output is empty; perplexity needs at least one token")
        rows.append((p + o)[-max_length:])
        n_out.append(len(o))

    @torch.inference_mode()
    def step(batch, pad_as=None):
        width = max(len(rows[i]) for i in pad_as or batch)
        input_ids, mask, pos = left_pad([rows[i] for i in batch], tokenizer.pad_token_id, model.device, width)
        keep = max(n_out[i] for i in batch) + 1  # the positions predicting the longest output, and one more
        logits = model(
            input_ids=input_ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=keep
        ).logits[:, :-1]  # (B, keep - 1, V): position t predicts token t + 1
        targets = input_ids[:, -(keep - 1) :]
        per_chunk = max(1, LOGIT_CHUNK // logits.shape[-1])
        out = []
        for j, i in enumerate(batch):
            lg, tg = logits[j, -n_out[i] :], targets[j, -n_out[i] :]
            parts = [
                torch.nn.functional.cross_entropy(
                    lg[k : k + per_chunk].float(), tg[k : k + per_chunk], reduction="none"
                )
                for k in range(0, len(tg), per_chunk)
            ]
            nll = torch.cat(parts)
            out.append(nll.cpu().numpy())
        return out

    return Task("perplexity", rows, step, list, {"n_out": n_out})


def score_choices(
    model, tokenizer, prompts, labels, *, temperature=1.0, max_length=MAX_LENGTH, **run
) -> tuple[np.ndarray, RunStats]:
    """Probabilities over `labels` for the next token after each prompt: (N, K), NaN rows not reached.

    `run` takes run_task's options: batch_tokens, deadline, progress, shard, checkpoint.
    """
    return run_task(
        choice_task(model, tokenizer, prompts, labels, temperature=temperature, max_length=max_length), model, **run
    )


def generate(
    model, tokenizer, prompts, *, max_new_tokens=32, stop=None, max_length=MAX_LENGTH, **run
) -> tuple[list[str | None], RunStats]:
    """Greedy continuations, None where not reached; `run` as for score_choices."""
    return run_task(
        generation_task(model, tokenizer, prompts, max_new_tokens=max_new_tokens, stop=stop, max_length=max_length),
        model,
        **run,
    )


def perplexity(
    model, tokenizer, prompts, outputs, *, max_length=MAX_LENGTH, **run
) -> tuple[list[np.ndarray | None], RunStats]:
    """Per-example arrays of output-token NLLs (None where not reached); `run` as for score_choices."""
    return run_task(perplexity_task(model, tokenizer, prompts, outputs, max_length=max_length), model, **run)
