"""The demo: predict and score every shipped competition that has labelled rows in data/, one table."""

from __future__ import annotations

import time
from pathlib import Path

from .. import competitions
from ..config import PredictConfig, ScoreConfig
from ..io import read_text_csv, write_csv_atomic
from ..progress import format_table
from .evaluate import score
from .prediction import predict

ROWS = 40  # labelled rows per competition: every stage real, a few minutes for all on a 2-core CPU


def labelled_competitions(data_dir) -> list[str]:
    """The shipped competitions whose labelled file is in data_dir/<name>/."""
    out = []
    for name in competitions.COMPETITIONS:
        comp = competitions.get(name)
        if comp.spec.files.train and comp.file("train", Path(data_dir) / name).is_file():
            out.append(name)
    return out


def run_demo(
    data_dir: str = "data",
    out_dir: str = "runs/demo",
    model: str = "demo",
    budget: str | None = None,
    names: list[str] | None = None,
    progress: bool = True,
    rows: int = ROWS,
) -> list[dict]:
    """For each competition: predict its labelled rows (the first `rows`; labels unused), score that and
    the constant baseline (the fallback row) the same way."""
    table = []
    for name in names or labelled_competitions(data_dir):
        comp = competitions.get(name)
        out = Path(out_dir) / name
        source = comp.file("train", Path(data_dir) / name)
        data = write_csv_atomic(read_text_csv(source).head(rows), out / source.name)  # the rows as written
        t0 = time.perf_counter()
        res = predict(
            PredictConfig(
                name, str(data), model=model, out=str(out / "submission.csv"), budget=budget, progress=progress
            )
        )
        truth = comp.read(data, labelled=True)
        baseline = write_csv_atomic(comp.fallback(truth[comp.id_column].tolist(), truth), out / "constant.csv")
        table.append(
            {
                "competition": name,
                "metric": comp.metric + (" (higher better)" if comp.higher_is_better else " (lower better)"),
                "kit": score(ScoreConfig(name, str(res.submission), str(data))),
                "constant": score(ScoreConfig(name, str(baseline), str(data))),
                "rows": res.rows,
                "predicted": res.predicted,
                "fallback": res.fallback,
                "rows/s": res.rows_per_s,
                "wall s": time.perf_counter() - t0,
            }
        )
    return table


def print_demo(rows: list[dict]) -> None:
    """Print the demo summary table."""
    print(format_table(rows))
