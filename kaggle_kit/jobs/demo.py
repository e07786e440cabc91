"""The demo: for every shipped competition with labelled rows in data/, the constant baseline, the model
zero-shot and the recipe its notebook runs, scored on the same rows; one table.

The labelled rows are cut in two: the first half is scored, the second half is what a recipe may fit on
(a few minutes of QLoRA, a temperature, a mean prompt), so no scored row was seen by what it scores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from .. import competitions
from ..config import PredictConfig, ScoreConfig
from ..io import read_text_csv, write_csv_atomic, write_head
from ..progress import format_table
from .evaluate import score
from .prediction import predict

ROWS = 40  # labelled rows per competition (half scored, half for the recipe): minutes on a 2-core CPU


@dataclass(frozen=True)
class Recipe:
    """What a shipped notebook adds to the zero-shot model, as far as this machine can run it."""

    what: str
    tta: int = 1
    train: str | None = None  # configs/<file>: QLoRA on the fit rows, predicted with the adapter
    calibrate: bool = False  # the temperature fitted on the fit rows (kaggle-kit calibrate), saved with it
    mean_prompt: bool = False  # searched on the fit rows' prompts, appended to every generation


# The notebooks' recipes (notebooks/<name>/); what needs Kaggle-sized data stays on Kaggle and is said so.
RECIPES = {
    "science_exam": Recipe("option-order TTA x5 (the retrieved passages need Kaggle's index)", tta=5),
    "lmsys": Recipe(
        "QLoRA (configs/lmsys_demo.yaml) + A/B swap TTA x2 + fitted temperature",
        tta=2,
        train="lmsys_demo.yaml",
        calibrate=True,
    ),
    "prompt_recovery": Recipe("mean prompt (kaggle-kit mean-prompt) appended to every generation", mean_prompt=True),
    "wsdm": Recipe("A/B swap TTA x2", tta=2),
}


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
    recipes: bool = True,
    max_new_tokens: int | None = None,
) -> list[dict]:
    """For each competition: the constant baseline (its fallback row), the model zero-shot and (with
    `recipes`) its notebook's recipe, on the first half of its first `rows` labelled rows (labels unused).
    `max_new_tokens` cuts the generations short (None: each competition's own length)."""
    table = []
    for name in names or labelled_competitions(data_dir):
        comp = competitions.get(name)
        out = Path(out_dir) / name
        source = comp.file("train", Path(data_dir) / name)
        scored = max(1, rows // 2)
        data = write_head(source, out / source.name, scored)  # the rows as written, in the file's format
        if comp.scores_with_model:  # perplexity: the model scores the reference texts; no submission
            table.append(_perplexity_row(comp, data, model, budget, progress))
            continue
        if comp.spec.files.catalogue:  # rank_candidates: the catalogue sits beside the rows
            write_csv_atomic(read_text_csv(comp.file("catalogue", Path(data_dir) / name)), comp.file("catalogue", out))
        t0 = time.perf_counter()
        base = PredictConfig(name, str(data), model=model, budget=budget, progress=progress)
        base = replace(base, max_new_tokens=max_new_tokens)
        res = predict(replace(base, out=str(out / "submission.csv")))
        truth = comp.read(data, labelled=True)
        baseline = write_csv_atomic(comp.fallback(truth[comp.id_column].tolist(), truth), out / "constant.csv")
        row = {
            "competition": name,
            "metric": comp.metric + (" (higher better)" if comp.higher_is_better else " (lower better)"),
            "constant": score(ScoreConfig(name, str(baseline), str(data))),
            "zero-shot": score(ScoreConfig(name, str(res.submission), str(data))),
            "recipe": "-",
            "the notebook's recipe": "as zero-shot here" if name not in RECIPES else "not run (--no-recipe)",
            "rows": res.rows,
            "fallback": res.fallback,
        }
        if recipes and name in RECIPES:
            fit = write_head(source, out / "fit" / source.name, rows - scored, start=scored)
            sub = _recipe(comp, RECIPES[name], base, res.submission, fit, out, Path(data_dir))
            row.update(
                {"recipe": score(ScoreConfig(name, str(sub), str(data))), "the notebook's recipe": RECIPES[name].what}
            )
        table.append({**row, "wall s": time.perf_counter() - t0})
    return table


def _recipe(comp, recipe: Recipe, base: PredictConfig, zero_shot: Path, fit: Path, out: Path, data_dir: Path) -> Path:
    """The recipe's submission for the scored rows: fitted on the `fit` rows only."""
    from ..config import CalibrateConfig
    from ..playbooks.calibration import calibrate

    cfg = replace(base, tta=recipe.tta, out=str(out / "recipe.csv"))
    if recipe.train:
        config = data_dir.resolve().parent / "configs" / recipe.train  # the checkout's configs/, beside data/
        cfg = replace(cfg, adapter=str(_train(config, base.model, fit, out)))
    if recipe.calibrate:
        on_fit = predict(replace(cfg, data=str(fit), out=str(out / "fit" / "submission.csv")))
        calibrate(CalibrateConfig(comp.name, str(on_fit.submission), str(fit), adapter=cfg.adapter))
    if recipe.mean_prompt:
        return _with_mean_prompt(comp, zero_shot, fit, out)
    return predict(cfg).submission


def _train(config: Path, model: str, fit: Path, out: Path) -> Path:
    """A few minutes of QLoRA (a config of configs/) on the fit rows; the best adapter."""
    from ..config import TrainConfig, load_yaml_config
    from .training import train

    sets = [f"train={fit}", f"out={out / 'train'}", f"model={model}", "progress=false"]
    res = train(load_yaml_config(TrainConfig, str(config), sets))
    return res.best or res.out / "last"


def _with_mean_prompt(comp, zero_shot: Path, fit: Path, out: Path) -> Path:
    """The zero-shot generations with the mean prompt of the fit rows' prompts appended (and as fallback)."""
    from ..config import MeanPromptConfig
    from ..io import read_submission
    from .evaluate import mean_prompt

    text = mean_prompt(MeanPromptConfig(str(fit), column=comp.settings.target, out=str(out / "mean_prompt.txt")))
    sub = comp.with_mean_text(read_submission(zero_shot), text.text, append=True)
    return write_csv_atomic(sub, out / "recipe.csv")


def _perplexity_row(comp, data: Path, model: str, budget, progress: bool) -> dict:
    """A competition scored by perplexity (instruction tuning): the model's perplexity of the reference
    outputs, zero-shot; no constant baseline exists for it."""
    from ..config import PerplexityConfig
    from ..playbooks.instruct import evaluate

    t0 = time.perf_counter()
    res = evaluate(PerplexityConfig(str(data), model=model, budget=budget, progress=progress))
    return {
        "competition": comp.name,
        "metric": f"{comp.metric} (lower better)",
        "constant": "-",
        "zero-shot": res.perplexity,
        "recipe": "-",
        "the notebook's recipe": "QLoRA on Kaggle (kaggle-kit train alpaca)",
        "rows": res.rows,
        "fallback": res.rows - res.scored,
        "wall s": time.perf_counter() - t0,
    }


def print_demo(rows: list[dict]) -> None:
    """Print the demo summary table."""
    print(format_table(rows))
