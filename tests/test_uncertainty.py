"""Uncertainty decomposition (Eq. 14) against SciPy and two-member examples worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy

from emodistill.evaluation.uncertainty import (
    decompose,
    decompose_task,
    entropy,
    ood_score,
    task_epistemic,
)
from emodistill.tasks import AU, EXPR, PAPER_TASKS, VA

rng = np.random.default_rng(0)


def test_entropy_matches_scipy():
    p = rng.dirichlet(np.ones(5), size=4)
    p[0] = [1, 0, 0, 0, 0]  # 0 log 0 = 0
    np.testing.assert_allclose(entropy(p), scipy_entropy(p, axis=-1))
    np.testing.assert_allclose(entropy(p.T, axis=0), scipy_entropy(p, axis=-1))


def test_two_confident_members_that_disagree_are_all_epistemic():
    members = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # (T=2, N=1, C=2)
    total, aleatoric, epistemic = decompose(members)
    assert total == pytest.approx([1.0]) and aleatoric == pytest.approx([0.0])
    assert epistemic == pytest.approx([1.0])


def test_two_member_example_by_hand():
    # members (0.5, 0.5) and (1, 0): mean (0.75, 0.25)
    members = np.array([[[0.5, 0.5]], [[1.0, 0.0]]])
    total, aleatoric, epistemic = decompose(members)
    h_mean = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    assert total == pytest.approx([h_mean])
    assert aleatoric == pytest.approx([0.5])  # (1 bit + 0 bits) / 2
    assert epistemic == pytest.approx([h_mean - 0.5])
    # an AU's P(present) alone gives the same, as its (absent, present) distribution
    binary = decompose_task(AU, np.array([[[0.0] * 11 + [0.5]], [[0.0] * 11 + [0.0]]]))
    for a, b in zip(binary, (total, aleatoric, epistemic), strict=True):
        np.testing.assert_allclose(a[:, 11], b)


def test_identical_members_and_single_member_have_no_epistemic():
    p = rng.dirichlet(np.ones(7), size=6)
    total, aleatoric, epistemic = decompose(np.stack([p, p, p]))
    np.testing.assert_array_equal(epistemic, 0.0)
    np.testing.assert_allclose(total, aleatoric)
    total, aleatoric, epistemic = decompose(p[None])
    np.testing.assert_array_equal(epistemic, 0.0)
    np.testing.assert_allclose(total, scipy_entropy(p, axis=-1) / math.log(7))


def test_bounds_and_uniform_maximum():
    members = rng.dirichlet(np.full(20, 0.3), size=(5, 50))
    for part in decompose(members):
        assert (part >= 0).all() and (part <= 1 + 1e-12).all()
    total, _, _ = decompose(np.full((2, 1, 20), 1 / 20))
    assert total == pytest.approx([1.0])


def test_decompose_task_groups():
    T, N = 3, 4
    au = rng.random((T, N, 12))
    total, _, epistemic = decompose_task(AU, au)
    assert total.shape == (N, 12)
    np.testing.assert_allclose(epistemic[:, 5], decompose(np.stack([1 - au[:, :, 5], au[:, :, 5]], -1))[2])
    expr = rng.dirichlet(np.ones(7), size=(T, N))
    assert decompose_task(EXPR, expr)[0].shape == (N, EXPR.n_groups)
    va = np.concatenate([rng.dirichlet(np.ones(20), size=(T, N)),
                         rng.dirichlet(np.ones(20), size=(T, N))], axis=-1)
    total, _, _ = decompose_task(VA, va)
    assert total.shape == (N, 2)
    np.testing.assert_allclose(total[:, 1], scipy_entropy(va[:, :, 20:].mean(0), axis=-1)
                               / math.log(20))


def test_ood_score_averages_groups_then_tasks():
    T, N = 2, 3
    au = rng.random((T, N, 12))
    expr = rng.dirichlet(np.ones(7), size=(T, N))
    score = ood_score(PAPER_TASKS, {"AU": au, "EXPR": expr})
    expected = (decompose_task(AU, au)[2].mean(1) + decompose_task(EXPR, expr)[2][:, 0]) / 2
    np.testing.assert_allclose(score, expected)
    np.testing.assert_array_equal(ood_score(PAPER_TASKS, {"AU": au[:1]}), 0.0)
    per_task = task_epistemic(PAPER_TASKS, {"EXPR": expr, "AU": au})
    assert list(per_task) == ["AU", "EXPR"]  # PAPER_TASKS order, whatever order they came in
    np.testing.assert_allclose(per_task["AU"], decompose_task(AU, au)[2].mean(1))
    np.testing.assert_allclose((per_task["AU"] + per_task["EXPR"]) / 2, score)


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown task"):
        ood_score(PAPER_TASKS, {"pose": np.zeros((2, 3, 4))})
    with pytest.raises(ValueError, match="NaN"):
        decompose(np.full((2, 3, 4), np.nan))
    with pytest.raises(ValueError, match="12 AU outputs"):
        decompose_task(AU, np.zeros((2, 3, 11)))
