"""The competitions the kit ships, each a spec file (specs/<name>/competition.yaml) in one explicit dict.

Any other competition is a spec file of your own: every function that takes a competition name takes
the path of a spec file too (`kaggle-kit predict my_comp/competition.yaml --data ...`).
"""

from __future__ import annotations

import functools
from pathlib import Path

from ..errors import KitError
from .base import Competition, aligned, check_submission

SPECS = Path(__file__).parent / "specs"
COMPETITIONS = {
    "science_exam": SPECS / "science_exam" / "competition.yaml",
    "lmsys": SPECS / "lmsys" / "competition.yaml",
    "prompt_recovery": SPECS / "prompt_recovery" / "competition.yaml",
    "eedi": SPECS / "eedi" / "competition.yaml",
    "llm_detect": SPECS / "llm_detect" / "competition.yaml",
    "aimo": SPECS / "aimo" / "competition.yaml",
    "wsdm": SPECS / "wsdm" / "competition.yaml",
    "map": SPECS / "map" / "competition.yaml",
    "alpaca": SPECS / "alpaca" / "competition.yaml",  # instruction data (no Kaggle competition: no kernel)
}


def on_kaggle() -> list[str]:
    """The shipped competitions that are Kaggle competitions (a slug: a notebook and a kernel each)."""
    return [name for name in COMPETITIONS if get(name).slug]


def get(name) -> Competition:
    """The competition called `name`, or the one a spec file at path `name` defines."""
    key = str(name)
    if key in COMPETITIONS:
        return _load(str(COMPETITIONS[key]))
    if key.endswith((".yaml", ".yml")) or Path(key).is_file():
        return _load(str(Path(key).resolve()))
    raise KitError(f"unknown competition {key!r}; valid: {', '.join(COMPETITIONS)}, or the path of a spec file")


@functools.lru_cache(maxsize=32)
def _load(path: str) -> Competition:
    from .spec import load_spec
    from .tasks import build

    return build(load_spec(path))


__all__ = ["COMPETITIONS", "Competition", "aligned", "check_submission", "get"]
