"""The demo: predict and score every competition on data/ with a model, one summary table."""

from __future__ import annotations

import time
from pathlib import Path

from . import competitions
from .config import PredictConfig, ScoreConfig
from .io import write_csv_atomic
from .jobs import predict, score
from .progress import format_table


def run_demo(
    data_dir: str = "data",
    out_dir: str = "runs/demo",
    model: str = "demo",
    budget: str | None = None,
    names: list[str] | None = None,
    progress: bool = True,
) -> list[dict]:
    """For each competition: predict data/<comp>/train.csv (labels unused), score it and the constant baseline."""
    rows = []
    for name in names or list(competitions.COMPETITIONS):
        comp = competitions.get(name)
        data = Path(data_dir) / name / "train.csv"
        out = Path(out_dir) / name
        t0 = time.perf_counter()
        res = predict(
            PredictConfig(
                name, str(data), model=model, out=str(out / "submission.csv"), budget=budget, progress=progress
            )
        )
        truth = comp.read(data, labelled=True)
        baseline_path = write_csv_atomic(comp.fallback(truth[comp.id_column].tolist()), out / "constant_baseline.csv")
        rows.append(
            {
                "competition": name,
                "metric": comp.metric + (" (higher better)" if comp.higher_is_better else " (lower better)"),
                "kit": score(ScoreConfig(name, str(res.submission), str(data))),
                "constant": score(ScoreConfig(name, str(baseline_path), str(data))),
                "rows": res.rows,
                "predicted": res.predicted,
                "fallback": res.fallback,
                "rows/s": res.rows_per_s,
                "wall s": time.perf_counter() - t0,
            }
        )
    return rows


def print_demo(rows: list[dict]) -> None:
    """Print the demo summary table."""
    print(format_table(rows))
