import pytest

from kaggle_kit.budget import Deadline, parse_duration
from kaggle_kit.errors import ConfigError


@pytest.mark.parametrize(
    "text,seconds",
    [("9h", 32400), ("30m", 1800), ("45s", 45), ("1h30m", 5400), ("90", 90), ("2.5s", 2.5), (12, 12.0), (None, None)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "9x", "-5s", "0s"])
def test_parse_duration_rejects(bad):
    with pytest.raises(ConfigError, match="budget"):
        parse_duration(bad)


def test_deadline_with_fake_clock():
    now = [100.0]
    d = Deadline(100.0, clock=lambda: now[0])
    assert d.margin == pytest.approx(2.0)
    assert not d.expired()
    now[0] += 90
    assert d.remaining() == pytest.approx(8.0)
    assert d.expired(next_cost=9.0) and not d.expired(next_cost=7.0)
    now[0] += 8.5
    assert d.expired()


def test_no_budget_never_expires():
    assert not Deadline(None).expired(next_cost=1e12)
