"""The competitions the kit knows: one file each, listed in one explicit dict."""

from ..errors import KitError
from . import lmsys, prompt_recovery, science_exam
from .base import Competition, check_submission

COMPETITIONS = {
    "science_exam": science_exam.COMPETITION,
    "lmsys": lmsys.COMPETITION,
    "prompt_recovery": prompt_recovery.COMPETITION,
}


def get(name: str) -> Competition:
    """The competition called `name`; an unknown name lists the valid ones."""
    if name not in COMPETITIONS:
        raise KitError(f"unknown competition {name!r}; valid: {', '.join(COMPETITIONS)}")
    return COMPETITIONS[name]


__all__ = ["COMPETITIONS", "Competition", "check_submission", "get"]
