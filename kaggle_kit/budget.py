"""Deadline: one wall-clock budget shared by training and inference."""

from __future__ import annotations

import re
import time

from .errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str | float | int | None, field: str = "budget") -> float | None:
    """Seconds from '9h', '30m', '45s', '1h30m', '90' (seconds) or a number; None means no budget."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms]?)", text.strip().lower())
        if not parts or re.sub(r"[\d.\shms]", "", text.lower()):
            raise ConfigError(field, f"cannot read duration {text!r}; use e.g. 9h, 30m, 45s or 1h30m")
        seconds = sum(float(n) * _UNITS[u or "s"] for n, u in parts)
    if seconds <= 0:
        raise ConfigError(field, f"duration must be positive, got {text!r}")
    return seconds


class Deadline:
    """A wall-clock budget with a safety margin.

    `margin` is kept back for writing outputs after the last batch (a fraction of the budget, capped).
    `Deadline(None)` never expires.
    """

    def __init__(self, seconds: float | None, margin: float = 0.02, clock=time.monotonic):
        self.clock = clock
        self.start = clock()
        self.seconds = seconds
        # Keep 2% (at most 10 minutes) for the final write: a 9h Kaggle run stops ~10 min early.
        self.margin = 0.0 if seconds is None else min(seconds * margin, 600.0)

    @classmethod
    def parse(cls, budget: str | float | None, **kw) -> Deadline:
        """Deadline from a duration string such as '9h' (None: unlimited)."""
        return cls(parse_duration(budget), **kw)

    def elapsed(self) -> float:
        """Seconds since the deadline started."""
        return self.clock() - self.start

    def remaining(self) -> float:
        """Seconds left before the margin; +inf without a budget."""
        if self.seconds is None:
            return float("inf")
        return self.seconds - self.margin - self.elapsed()

    def expired(self, next_cost: float = 0.0) -> bool:
        """True when the budget (less margin) is spent, or would be after work costing `next_cost` s."""
        return self.remaining() < next_cost

    def __repr__(self) -> str:
        return f"Deadline(seconds={self.seconds}, remaining={self.remaining():.1f})"
