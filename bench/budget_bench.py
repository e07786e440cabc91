"""Budget accuracy: a budget that expires mid-run must end within +2% of the budget.

Runs `predict` on a Science Exam file far too large for the budget (real rows tiled with fresh ids) and
reports the wall time of the whole call (model load and writes included) against the budget.

    python bench/budget_bench.py [--budget 90s] [--rows 3000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kaggle_kit.budget import parse_duration  # noqa: E402
from kaggle_kit.config import PredictConfig  # noqa: E402
from kaggle_kit.jobs import predict  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", default="90s")
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--competition", default="science_exam")
    args = ap.parse_args()
    import pandas as pd

    src = ROOT / "data" / args.competition / "test.csv"
    df = pd.read_csv(src, dtype=str, keep_default_na=False)
    df = pd.concat([df] * (-(-args.rows // len(df))), ignore_index=True).head(args.rows)
    df["id"] = [str(i) for i in range(len(df))]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "test.csv"
        df.to_csv(data, index=False)
        t0 = time.perf_counter()
        res = predict(
            PredictConfig(args.competition, str(data), out=str(Path(tmp) / "s.csv"), budget=args.budget, progress=False)
        )
        wall = time.perf_counter() - t0
    budget = parse_duration(args.budget)
    print(
        f"budget {budget:.0f}s, wall {wall:.1f}s ({100 * (wall - budget) / budget:+.1f}% of budget), "
        f"{res.predicted} predicted, {res.fallback} fallback, max_length used {res.max_length}, "
        f"planned {res.planned_seconds}"
    )


if __name__ == "__main__":
    main()
