"""Ensemble arithmetic: weight fitting, combining with missing rows, the cascade's row choice, spec errors."""

from __future__ import annotations

import numpy as np
import pytest

from kaggle_kit.competitions import get
from kaggle_kit.errors import ConfigError
from kaggle_kit.jobs.ensemble import EnsembleSpec, Member, combine, fit_weights, least_confident, load_spec, save_spec
from kaggle_kit.metrics import log_loss


def _members(seed=0, n=400):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    good = np.full((n, 3), 0.15)
    good[np.arange(n), y] = 0.7  # right 70% of the time at 0.7
    flip = rng.random(n) < 0.3
    good[flip] = np.roll(good[flip], 1, axis=1)
    noise = rng.dirichlet(np.ones(3), n)
    return y, good, noise


def test_fitted_weights_favour_the_informative_member_and_beat_equal_weights():
    y, good, noise = _members()
    w = fit_weights(y, [good, noise])
    assert w.sum() == pytest.approx(1.0) and w[0] > 0.8
    lm = get("lmsys")
    fitted = log_loss(y, combine(lm, [good, noise], w))
    assert fitted <= log_loss(y, combine(lm, [good, noise], np.array([0.5, 0.5]))) + 1e-12
    assert fitted <= log_loss(y, good) + 1e-9
    # the optimum: no weight on a grid does better
    grid = [log_loss(y, combine(lm, [good, noise], np.array([a, 1 - a]))) for a in np.linspace(0, 1, 101)]
    assert fitted <= min(grid) + 1e-6


def test_combine_uses_the_members_that_have_a_row_and_joins_texts():
    lm = get("lmsys")
    a = np.array([[0.6, 0.3, 0.1], [np.nan] * 3, [np.nan] * 3])
    b = np.array([[0.2, 0.2, 0.6], [0.1, 0.1, 0.8], [np.nan] * 3])
    out = combine(lm, [a, b], np.array([0.75, 0.25]))
    np.testing.assert_allclose(out[0], 0.75 * a[0] + 0.25 * b[0])
    np.testing.assert_allclose(out[1], b[1])  # only b reached row 1: its own probabilities
    assert np.isnan(out[2]).all()  # nobody did: the fallback comes later
    t = combine(lm, [a, b], np.array([0.5, 0.5]), temperature=2.0)
    assert np.all(np.abs(t[0] - 1 / 3) < np.abs(out[0] - 1 / 3))  # T > 1 softens
    pr = get("prompt_recovery")
    assert combine(pr, [["Make it formal", None], ["as a poem", None]], np.ones(2)) == [
        "Make it formal as a poem",
        None,
    ]


def test_least_confident_takes_the_smallest_margins_and_missing_rows_first():
    p = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [np.nan] * 3, [0.5, 0.1, 0.4], [0.6, 0.3, 0.1]])
    assert least_confident(p, 0.4) == [1, 2]
    assert least_confident(p, 0.6) == [1, 2, 3]
    assert least_confident(p, 1.0) == [0, 1, 2, 3, 4]


def test_spec_round_trips_and_bad_fields_are_named(tmp_path):
    spec = EnsembleSpec([Member("a", adapter="runs/a"), Member("b", tta=2)], {"a": 0.25, "b": 0.75}, 1.1)
    back = load_spec(save_spec(spec, tmp_path / "e.yaml"))
    assert back.members == spec.members and back.weights == spec.weights and back.temperature == 1.1
    np.testing.assert_allclose(back.weight_vector(), [0.25, 0.75])
    cases = {
        "members:\n  - {name: a, adaptor: x}\n": "members\\[0\\].adaptor",
        "members:\n  - {model: demo}\n": "members\\[0\\].name",
        "members:\n  - {name: a}\nweights: {b: 1}\n": "weights.b",
        "members:\n  - {name: a}\nweights: {a: -1}\n": "weights.a",
        "members:\n  - {name: a}\n  - {name: a}\n": "'members'",
        "members:\n  - {name: a}\ntemperature: 0\n": "'temperature'",
        "member: []\n": "'ensemble'",
    }
    for i, (text, field) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=field):
            load_spec(path)


def test_vllm_backend_is_refused_before_anything_runs_where_it_cannot(tmp_path):
    """No vllm / no GPU here: --backend vllm fails with the field named and writes nothing."""
    from kaggle_kit import jobs
    from kaggle_kit.config import PredictConfig
    from kaggle_kit.infer import vllm_backend

    if vllm_backend.available():
        pytest.skip("vllm and a GPU are present")
    out = tmp_path / "sub.csv"
    data = tmp_path / "test.csv"
    data.write_text("id,prompt,A,B,C,D,E\n1,q,a,b,c,d,e\n")
    with pytest.raises(ConfigError, match="'backend'"):
        jobs.predict(PredictConfig("science_exam", str(data), out=str(out), backend="vllm"))
    assert not out.exists()
    with pytest.raises(ConfigError, match="'backend'"):
        PredictConfig("science_exam", str(data), backend="tgi")


def test_cascade_dtype_alone_is_a_cascade_and_bad_values_are_named():
    from kaggle_kit.config import PredictConfig

    assert PredictConfig("lmsys", "t.csv", cascade_dtype="float32").cascades()
    assert not PredictConfig("lmsys", "t.csv", dtype="float32").cascades()
    for kwargs, field in [
        ({"cascade_dtype": "float64"}, "'cascade_dtype'"),
        ({"dtype": "fp16"}, "'dtype'"),
        ({"cascade_dtype": "float32", "workers": 2}, "'ensemble'"),
        ({"cascade_dtype": "float32", "shard": "0/2"}, "'ensemble'"),
    ]:
        with pytest.raises(ConfigError, match=field):
            PredictConfig("lmsys", "t.csv", **kwargs)


def test_a_dtype_cascade_in_the_runs_own_dtype_is_refused_before_any_model_loads(tmp_path):
    from kaggle_kit import jobs
    from kaggle_kit.config import PredictConfig

    data = tmp_path / "test.csv"
    data.write_text("id,prompt,A,B,C,D,E\n1,q,a,b,c,d,e\n")
    out = tmp_path / "sub.csv"
    cfg = PredictConfig("science_exam", str(data), out=str(out), dtype="float32", cascade_dtype="float32")
    with pytest.raises(ConfigError, match="'cascade_dtype'"):
        jobs.predict(cfg)
    assert not out.exists()
