import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss

from kaggle_kit.metrics import log_loss, map_at_k, perplexity, sharpened_cosine_rows, sharpened_cosine_similarity


def test_map_at_3_worked_example():
    preds = ["A B C", "B A C", "C B A", "D E A", "E D C"]
    truth = ["A", "A", "A", "B", "C"]
    # 1, 1/2, 1/3, 0, 1/3
    assert map_at_k(preds, truth) == pytest.approx((1 + 0.5 + 1 / 3 + 0 + 1 / 3) / 5)


def test_map_at_3_counts_distinct_labels_only():
    # "A A B": the repeated A is counted once, so B sits at rank 2, not 3
    assert map_at_k(["A A B"], ["B"]) == pytest.approx(0.5)
    # only the first three distinct labels count
    assert map_at_k(["A B C D"], ["D"]) == 0.0
    assert map_at_k([["C", "D"]], ["D"]) == pytest.approx(0.5)


def test_map_rejects_length_mismatch():
    with pytest.raises(ValueError):
        map_at_k(["A"], ["A", "B"])


def test_log_loss_agrees_with_sklearn():
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1, 1, 1], size=500)
    y = rng.integers(0, 3, size=500)
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, p, labels=[0, 1, 2]), abs=1e-9)


def test_log_loss_normalises_rows_and_clips():
    y = [0, 1]
    # rows that do not sum to 1 are divided by their sum
    assert log_loss(y, [[2, 1, 1], [1, 1, 2]]) == pytest.approx(-np.log(0.5) / 2 - np.log(0.25) / 2)
    # a zero probability on the true class is clipped to 1e-15, not infinite
    assert log_loss([0], [[0.0, 0.5, 0.5]]) == pytest.approx(-np.log(1e-15), rel=1e-6)
    assert log_loss([0, 1, 2], np.full((3, 3), 1 / 3)) == pytest.approx(np.log(3))


def test_sharpened_cosine():
    a = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    b = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0], [-1.0, 0.0]])
    rows = sharpened_cosine_rows(a, b)
    assert rows == pytest.approx([1.0, 0.0, (1 / np.sqrt(2)) ** 3, -1.0])
    assert sharpened_cosine_similarity(a, b) == pytest.approx(np.mean(rows))


def test_perplexity_is_mean_of_per_example_exp():
    nlls = [[np.log(2), np.log(2)], [np.log(4)]]
    assert perplexity(nlls) == pytest.approx((2 + 4) / 2)
