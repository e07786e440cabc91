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


def test_heartbeat_logs_rows_rate_eta_budget_and_missing(caplog):
    """A line in the log every `every` seconds: Kaggle keeps the log when progress bars do not render."""
    from kaggle_kit.budget import Deadline
    from kaggle_kit.progress import Heartbeat, duration

    beat = Heartbeat(100, "score", Deadline(3600), every=0.0001)
    import time

    time.sleep(0.01)
    with caplog.at_level("INFO", logger="kaggle_kit"):
        assert beat.beat(25, missing=2)
    line = caplog.records[-1].getMessage()
    assert "heartbeat score: 25/100 rows (25%)" in line and "without output 2" in line and "budget left 5" in line
    assert not Heartbeat(100, "score", every=0).beat(50)  # 0: off
    assert duration(7625) == "2h07m" and duration(245) == "4m05s" and duration(float("inf")) == "?"
