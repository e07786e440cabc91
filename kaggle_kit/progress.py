"""Progress bars with rate and ETA, summary tables, loss curves."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("kaggle_kit")


def bar(total: int, desc: str, unit: str = "row", disable: bool | None = None):
    """A tqdm bar with rate and ETA on stderr (quiet when stderr is not a terminal unless forced)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        dynamic_ncols=True,
        disable=disable,
        file=sys.stderr,
        mininterval=1.0,
        smoothing=0.1,
    )


class Heartbeat:
    """A line in the log every `every` seconds while rows are worked through: done / total, rows/s, ETA,
    the budget left and the rows without an output. Kaggle keeps a kernel's log even when its progress
    bars do not render, so an 8-hour run says how it is going. `every` defaults to
    $KAGGLE_KIT_HEARTBEAT seconds, else 300; 0 turns it off."""

    def __init__(self, total: int, desc: str, deadline=None, every: float | None = None, done: int = 0):
        import os
        import time

        self.total, self.desc, self.deadline, self.start_done = total, desc, deadline, done
        self.every = float(os.environ.get("KAGGLE_KIT_HEARTBEAT", 300)) if every is None else every
        self._clock = time.monotonic
        self.t0 = self.last = self._clock()

    def beat(self, done: int, missing: int = 0, force: bool = False) -> bool:
        """Log a line if `every` seconds have passed (or `force`); True when one was logged."""
        now = self._clock()
        if self.every <= 0 or (not force and now - self.last < self.every):
            return False
        self.last = now
        ran = done - self.start_done
        rate = ran / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        left = None if self.deadline is None or self.deadline.seconds is None else self.deadline.remaining()
        log.info(
            "heartbeat %s: %d/%d rows (%.0f%%), %.2f rows/s, ETA %s, budget left %s, without output %d",
            self.desc, done, self.total, 100.0 * done / max(self.total, 1), rate, duration(eta),
            "none set" if left is None else duration(left), missing,
        )  # fmt: skip
        return True


def duration(seconds: float) -> str:
    """'2h07m', '4m05s', '12s' (or '?' when unknown)."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    h, m, sec = s // 3600, s % 3600 // 60, s % 60
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def format_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A plain-text table: one header line, a rule, one line per row; floats to 4 decimals."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])

    def cell(v):
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.0f}"
        return "" if v is None else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def loss_curve(records: list[dict], path) -> None:
    """A PNG of train loss (per log line) and eval loss (per evaluation) against optimizer steps.

    Drawn on a bare matplotlib Figure (no pyplot), so a notebook's backend and open figures are untouched."""
    from matplotlib.figure import Figure

    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", color="tab:orange")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean token NLL)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
