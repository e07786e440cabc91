"""The fast paths: every place the kit computes something another way than plain transformers would.

- prefix.py: the tokens every row shares run once (KV cache), per task;
- last_position.py: choice scoring runs the last layer's per-position work on the last position only;
- label_head.py: answer-label logits in fp32 from the hidden state a half-precision model's head reads;
- attention.py: blocked CPU attention (registered as `kit_cpu`) for prompt-length queries, and on AMX CPUs
  torch's flash kernel a block of queries at a time (`kit_cpu_sliced`);
- packed.py: bf16 linear weights packed once into oneDNN's layout, 4-bit ones kept in training's (CPU);
- heap.py: glibc keeps freed activation buffers instead of page-faulting them in again (CPU).

One switch turns them all off (`fast_paths: false`, `--fast-paths off`). Each must give the numbers of
plain transformers (eager attention, fp32, one row at a time) to the dtype's rounding, and each is checked
against the model it runs on once, on a small probe, when the model is loaded (or first used): a path
that cannot be exact for a model turns itself off for that model and says why once, in the log. The
cross-family tests (tests/integration/test_families.py) hold them to that on six architectures.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field

log = logging.getLogger("kaggle_kit")

SUPPORTED_LAYERS = ("full_attention", "sliding_attention")  # what the prefix cache knows how to lay out
_STATE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> FastPaths


@dataclass
class FastPaths:
    """Which fast paths run on one model, and why any is off."""

    enabled: bool = True  # the one switch; off = plain transformers everywhere
    prefix_cache: bool = True
    window: int | None = None  # smallest sliding window in cache slots; None = no sliding layer
    prune_last_layer: bool = True
    label_head: bool = True  # may still be found not to apply (label_head.py checks the output layer)
    cpu_attention: bool = False  # the model runs the kit's blocked attention
    packed: int = 0  # linears packed into oneDNN's layout
    kept_4bit: int = 0  # 4-bit linears kept in the layout bitsandbytes trains in
    heap: bool = False
    off: dict = field(default_factory=dict)  # path -> why it is off for this model

    def turn_off(self, path: str, why: str) -> None:
        """Switch `path` off for this model and say why, once."""
        if path in self.off:
            return
        setattr(self, path, False)
        self.off[path] = why
        log.info("fast path %s off for this model: %s", path, why)


def paths(model) -> FastPaths:
    """The model's fast paths: set when models.load_model loaded it, else worked out on first use."""
    found = _STATE.get(model)
    if found is None:
        found = _STATE[model] = inspect(model)
    return found


def set_paths(model, fast: FastPaths) -> FastPaths:
    """Record `fast` as the model's fast paths (load_model, and tests that switch them)."""
    _STATE[model] = fast
    return fast


def attention_window(config) -> tuple[int | None, str | None]:
    """(smallest sliding window, None) of a model config, window None without sliding layers; or
    (None, reason) when a layer's attention is of a kind the prefix cache cannot lay out exactly
    (chunked attention counts chunks in cache slots too; KV-sharing or attention-free layers)."""
    from transformers.cache_utils import get_layer_types_and_kwargs

    text = config.get_text_config(decoder=True)
    try:
        types, kwargs = get_layer_types_and_kwargs(text)
    except (AttributeError, TypeError, ValueError) as exc:
        return None, f"its layer types are unknown ({exc})"
    odd = sorted(set(types) - set(SUPPORTED_LAYERS))
    if odd:  # transformers' "dummy": a layer with no cache of its own (Gemma 4's KV-shared layers)
        named = [f"{t} (KV-shared or cache-free)" if t == "dummy" else t for t in odd]
        return None, f"it has {', '.join(named)} layers"
    windows = [kw["sliding_window"] for t, kw in zip(types, kwargs) if t == "sliding_attention"]
    windows = [w for w in windows if w]
    return (min(windows) if windows else None), None


def inspect(model, enabled: bool = True, probe: bool = True) -> FastPaths:
    """The fast paths that apply to `model`: structural checks, then (with `probe`) each path against
    the plain computation on a short probe batch."""
    from .attention import NAME, SLICED

    fast = FastPaths(enabled=enabled)
    if not enabled:
        fast.prefix_cache = fast.prune_last_layer = fast.label_head = False
        return fast
    fast.cpu_attention = getattr(model.config, "_attn_implementation", None) in (NAME, SLICED)
    fast.window, why = attention_window(model.config)
    if why:
        fast.turn_off("prefix_cache", why)
    if probe:
        from .probe import check_paths

        check_paths(model, fast)
    return fast
