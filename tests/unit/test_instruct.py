"""The NTU ADL homework's few-shot picking (balanced over a category) and the synthetic-data pairing."""

from __future__ import annotations

from collections import Counter

import pytest

from kaggle_kit.errors import ConfigError, InputError
from kaggle_kit.playbooks.instruct import pick_shots
from kaggle_kit.playbooks.synth import pairs, read_prompts


def _records():
    # imbalanced on purpose: 12 'to_modern', 3 'to_classical'
    recs = [{"id": f"m{i}", "instruction": f"modern {i}", "output": "x", "dir": "to_modern"} for i in range(12)]
    return recs + [
        {"id": f"c{i}", "instruction": f"classical {i}", "output": "y", "dir": "to_classical"} for i in range(3)
    ]


def test_shots_balanced_over_the_category_and_never_the_evaluated_records():
    recs = _records()
    shots = pick_shots(recs, 4, "dir", exclude=[recs[-1]])
    assert Counter(s["dir"] for s in shots) == {"to_modern": 2, "to_classical": 2}
    assert recs[-1] not in shots and len({s["id"] for s in shots}) == 4
    # a category runs out: the rest come from the others
    assert Counter(s["dir"] for s in pick_shots(recs, 8, "dir")) == {"to_modern": 5, "to_classical": 3}
    # unbalanced draw without a category; seeded
    assert pick_shots(recs, 4, seed=1) == pick_shots(recs, 4, seed=1)
    with pytest.raises(ConfigError, match="'shots_category'"):
        pick_shots(recs, 2, "topic")


def test_synthetic_pairs_and_prompt_files(tmp_path):
    got = pairs(3, 5, 2, seed=0)
    assert len(got) == 6 and all(a != b for (t1, a), (t2, b) in zip(got[::2], got[1::2]))
    assert [t for t, _ in got] == [0, 0, 1, 1, 2, 2] and pairs(3, 5, 2, seed=0) == got
    assert len(pairs(2, 1, 3, seed=0)) == 2  # never more prompts per text than there are
    (tmp_path / "p.txt").write_text("Make it rhyme\n\nMake it rhyme\nAs a pirate\n")
    assert read_prompts(tmp_path / "p.txt") == ["Make it rhyme", "As a pirate"]
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(InputError, match="no rewrite prompts"):
        read_prompts(tmp_path / "empty.txt")
