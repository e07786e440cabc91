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
    """A PNG of train loss (per log line) and eval loss (per evaluation) against optimizer steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
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
    plt.close(fig)
