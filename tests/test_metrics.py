"""Metrics against scikit-learn and values worked out by hand, plus their input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from emodistill.evaluation.metrics import (
    abaw_au,
    abaw_expr,
    ccc,
    ece,
    emotion_metrics,
    nll_binary,
    nll_binned,
    nll_categorical,
    reliability,
    rmse,
    roc_auc,
    roc_curve,
)
from emodistill.tasks import PAPER_TASKS, VA_BINS, va_to_bin

rng = np.random.default_rng(0)


def test_abaw_au_matches_sklearn():
    y = rng.integers(0, 2, (40, 12))
    y[:, 3] = 0  # an AU never present
    prob = rng.random((40, 12))
    predicted = (prob > 0.5).astype(int)
    f1 = np.mean([f1_score(y[:, c], predicted[:, c], zero_division=0) for c in range(12)])
    expected = 0.5 * f1 + 0.5 * accuracy_score(y.ravel(), predicted.ravel())
    assert abaw_au(y, prob) == pytest.approx(expected)


def test_abaw_au_by_hand():
    y = np.zeros((2, 12), int)
    y[0, 0] = 1
    prob = np.zeros((2, 12))
    prob[:, 0] = 0.9  # AU1: one true positive, one false positive -> F1 2/3; others F1 0
    # accuracy: 23 of 24 entries right
    assert abaw_au(y, prob) == pytest.approx(0.5 * (2 / 3) / 12 + 0.5 * 23 / 24)


def test_abaw_expr_matches_sklearn_with_absent_classes():
    y = rng.choice([0, 1, 4], size=50)  # classes 2, 3, 5, 6 never present in truth
    prob = rng.dirichlet(np.ones(7), size=50)
    predicted = prob.argmax(1)
    expected = (0.67 * f1_score(y, predicted, average="macro", labels=range(7), zero_division=0)
                + 0.33 * accuracy_score(y, predicted))
    assert abaw_expr(y, prob) == pytest.approx(expected)


def test_ccc_hand_values_and_constant_inputs():
    assert ccc(np.array([1.0, 2, 3]), np.array([2.0, 4, 6])) == pytest.approx(8 / 22)
    assert ccc(np.array([1.0, 2, 3]), np.array([1.0, 2, 3])) == pytest.approx(1.0)
    assert ccc(np.array([1.0, 2, 3]), np.array([3.0, 2, 1])) == pytest.approx(-1.0)
    assert ccc(np.array([1.0, 2, 3]), np.full(3, 5.0)) == 0.0
    assert ccc(np.full(3, 0.2), np.full(3, 0.2)) == 0.0  # 0/0: reported as 0


def test_nll_matches_sklearn_log_loss():
    y = rng.integers(0, 2, (30, 3))
    prob = rng.random((30, 3))
    per_column = nll_binary(y, prob, per_column=True)
    for c in range(3):
        assert per_column[c] == pytest.approx(log_loss(y[:, c], prob[:, c], labels=[0, 1]))
    assert nll_binary(y, prob) == pytest.approx(per_column.mean())
    labels = rng.integers(0, 7, 30)
    probs = rng.dirichlet(np.ones(7), size=30)
    assert nll_categorical(labels, probs) == pytest.approx(log_loss(labels, probs,
                                                                    labels=range(7)))


def test_nll_clips_certain_mistakes():
    assert nll_binary(np.array([1]), np.array([0.0])) == pytest.approx(-math.log(1e-7))
    assert nll_categorical(np.array([1]), np.array([[1.0, 0.0]])) == pytest.approx(
        -math.log(1e-7))


def test_nll_binned_uses_the_label_bin():
    values = np.array([-1.0, 0.0, 0.99, 1.0])
    prob = np.full((4, VA_BINS), 0.01)
    prob[np.arange(4), va_to_bin(values)] = 0.81  # rows sum to 1
    assert list(va_to_bin(values)) == [0, 10, 19, 19]
    assert va_to_bin(torch.tensor([-1.0, -0.95, 0.0, 0.99, 1.0])).tolist() == [0, 0, 10, 19, 19]  # the loss's
    assert nll_binned(values, prob) == pytest.approx(-math.log(0.81))


def test_rmse_by_hand():
    assert rmse(np.array([0.0, 0.0]), np.array([3.0, 4.0])) == pytest.approx(math.sqrt(12.5))


def test_ece_and_reliability_by_hand():
    # categorical: confidences 0.9, 0.9 (one right), 0.6 (right), 0.6 (wrong)
    prob = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 0, 0, 0])
    # bins of width 0.1: 0.9 -> bin 8, 0.6 -> bin 5; each bin accuracy 0.5
    assert ece(y, prob, n_bins=10) == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    confidence, accuracy, count = reliability(y, prob, n_bins=10)
    assert count.tolist() == [0, 0, 0, 0, 0, 2, 0, 0, 2, 0]
    assert confidence[8] == pytest.approx(0.9) and accuracy[5] == pytest.approx(0.5)
    assert np.isnan(confidence[0])
    # binary: p = 0.8 for a present entry (right, confidence 0.8), p = 0.3 for a present one
    # (wrong, confidence 0.7)
    assert ece(np.array([1, 1]), np.array([0.8, 0.3]), n_bins=10) == pytest.approx(
        0.5 * 0.2 + 0.5 * 0.7)


def test_ece_is_zero_when_calibrated():
    # confidence 0.75 everywhere and 3 of 4 right
    prob = np.tile([0.75, 0.25], (4, 1))
    assert ece(np.array([0, 0, 0, 1]), prob) == pytest.approx(0.0)


def test_roc_matches_sklearn_with_ties():
    positive = rng.random(60) < 0.4
    score = np.round(rng.random(60) + positive * 0.3, 1)  # many tied scores
    assert roc_auc(positive, score) == pytest.approx(roc_auc_score(positive, score))
    fpr, tpr = roc_curve(positive, score)
    sk_fpr, sk_tpr, _ = sk_roc_curve(positive, score, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert roc_auc(positive, np.zeros(60)) == pytest.approx(0.5)


def test_emotion_metrics_uses_masks_and_sums_tasks():
    n = 8
    y_true = {"AU": rng.integers(0, 2, (n, 12)).astype(np.float32),
              "EXPR": rng.integers(0, 7, n),
              "VA": rng.uniform(-1, 1, (n, 2))}
    probs = {"AU": rng.random((n, 12)), "EXPR": rng.dirichlet(np.ones(7), n),
             "VA": np.concatenate([rng.dirichlet(np.ones(20), n),
                                   rng.dirichlet(np.ones(20), n)], axis=1)}
    valid = np.arange(n) < 5
    y_true["EXPR"][~valid] = -1
    y_true["VA"][~valid] = -5
    masks = {"AU": np.ones(n, bool), "EXPR": valid, "VA": valid}
    results = emotion_metrics(PAPER_TASKS, y_true, probs, masks)
    va_prediction = (probs["VA"].reshape(n, 2, 20) * (np.arange(20) / 10 - 0.95)).sum(-1)
    assert results["AU"] == pytest.approx(abaw_au(y_true["AU"], probs["AU"]))
    assert results["EXPR"] == pytest.approx(abaw_expr(y_true["EXPR"][:5], probs["EXPR"][:5]))
    assert results["arousal"] == pytest.approx(ccc(y_true["VA"][:5, 1], va_prediction[:5, 1]))
    assert results["total"] == pytest.approx(sum(results[k] for k in
                                                 ("AU", "EXPR", "valence", "arousal")))
    # a task with no valid frame, or no labels, is left out of the results and the total
    results = emotion_metrics(PAPER_TASKS, {"AU": y_true["AU"], "EXPR": y_true["EXPR"]}, probs,
                              {"EXPR": np.zeros(n, bool)})
    assert set(results) == {"AU", "total"} and results["total"] == results["AU"]


@pytest.mark.parametrize(("call", "message"), [
    (lambda: abaw_au(np.zeros((3, 12)), np.full((3, 12), np.nan)), "NaN"),
    (lambda: abaw_au(np.zeros((3, 11)), np.zeros((3, 12))), "shape"),
    (lambda: abaw_expr(np.array([0, 7]), np.full((2, 7), 1 / 7)), "class indices"),
    (lambda: abaw_expr(np.array([0, 1, 2]), np.full((2, 7), 1 / 7)), "row counts"),
    (lambda: ccc(np.array([np.nan, 1.0]), np.array([0.0, 1.0])), "NaN"),
    (lambda: nll_binary(np.array([0, 2]), np.array([0.5, 0.5])), "only 0 and 1"),
    (lambda: nll_categorical(np.array([0]), np.array([[1.5, -0.5]])), "probabilities"),
    (lambda: rmse(np.zeros(3), np.zeros(4)), "differ"),
    (lambda: roc_auc(np.ones(3, bool), np.zeros(3)), "both positive and negative"),
    (lambda: ccc(np.array([]), np.array([])), "empty"),
])
def test_bad_inputs_raise_one_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
