"""The feature-density OOD score: Mahalanobis distances against hand-computed ones, thresholds
against the false-alarm rate they promise, the stored file, and the real non-face pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis
from sklearn.covariance import ledoit_wolf

from emodistill.core.errors import InputError
from emodistill.data.ood import load_nonfaces
from emodistill.evaluation.density import (
    FALSE_ALARM,
    EnsembleDensity,
    distance,
    ensemble_thresholds,
    fit_gaussians,
    threshold,
)
from emodistill.evaluation.ood import held_out_flag_rate


def test_distance_worked_by_hand_in_one_dimension():
    # Class 0 at 0 and 2 (mean 1), class 1 at 10 and 12 (mean 11): every frame lies 1 from its
    # class mean, so the pooled variance is 1, and a single dimension leaves nothing to shrink.
    gaussians = fit_gaussians(np.array([[0.0], [2.0], [10.0], [12.0]]), np.array([0, 0, 1, 1]))
    assert gaussians.dim == 1
    # 4 is 3 from class 0's mean and 7 from class 1's: 3^2 / 1; 11 sits on class 1's mean.
    assert distance(gaussians, np.array([[4.0], [11.0], [-1.0]])) == pytest.approx([9.0, 0.0, 4.0])


def test_distance_is_the_squared_mahalanobis_distance_to_the_nearest_class_mean():
    rng = np.random.default_rng(0)
    classes = np.repeat([0, 1, 2], 15)
    features = rng.normal(size=(45, 3)) @ np.array([[2.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 0.2]])
    features += np.array([[0, 0, 0], [4, 0, 0], [0, 3, 1]])[classes]
    gaussians = fit_gaussians(features, classes)
    means = np.stack([features[classes == c].mean(0) for c in range(3)])
    covariance, shrinkage = ledoit_wolf(features - means[classes], assume_centered=True)
    assert gaussians.shrinkage == pytest.approx(shrinkage) and 0 < shrinkage < 1
    inverse = np.linalg.inv(covariance)
    probe = rng.normal(scale=3, size=(6, 3))
    expected = [min(mahalanobis(x, m, inverse) ** 2 for m in means) / 3 for x in probe]
    assert distance(gaussians, probe) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match=r"expected features \(N, 3\)"):
        distance(gaussians, probe[:, :2])


def test_threshold_flags_the_false_alarm_rate():
    scores = np.random.default_rng(1).permutation(np.arange(1.0, 1001.0))
    assert np.mean(scores > threshold(scores)) == pytest.approx(FALSE_ALARM)
    assert np.mean(scores > threshold(scores, 0.2)) == pytest.approx(0.2)
    # The k-th ensemble threshold is that of the mean over the first k members.
    members = np.random.default_rng(2).gamma(2.0, size=(3, 500))
    thresholds = ensemble_thresholds(members)
    assert thresholds == pytest.approx([threshold(members[:k].mean(0)) for k in (1, 2, 3)])


def test_held_out_flag_rate_is_near_the_false_alarm_rate_on_alike_videos():
    rng = np.random.default_rng(3)
    video = np.repeat(np.arange(200), 20)
    scores = rng.gamma(3.0, size=len(video))
    assert held_out_flag_rate(scores, video) == pytest.approx(FALSE_ALARM, abs=0.01)
    # Two unlike videos: each one's threshold flags all or none of the other, never 5%.
    unlike = np.concatenate([rng.random(100), 10 + rng.random(100)])
    assert held_out_flag_rate(unlike, np.repeat([0, 1], 100)) == pytest.approx(0.5)


def test_a_stored_density_scores_as_it_was_fitted(tmp_path: Path):
    rng = np.random.default_rng(5)
    members = tuple(fit_gaussians(rng.normal(size=(60, 4)), rng.integers(0, 3, 60)) for _ in range(2))
    density = EnsembleDensity(members, np.array([1.5, 1.2]))
    density.save(tmp_path / "density.safetensors")
    loaded = EnsembleDensity.load(tmp_path / "density.safetensors")
    features = rng.normal(size=(2, 7, 4))
    assert loaded.score(features) == pytest.approx(density.score(features))
    assert loaded.score(features[:1]) == pytest.approx(distance(members[0], features[0]))
    assert (loaded.threshold_for(1), loaded.threshold_for(2)) == (1.5, 1.2)
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match=r"broken\.safetensors"):
        EnsembleDensity.load(tmp_path / "broken.safetensors")


def test_nonface_pictures_are_real_and_varied():
    nonfaces = load_nonfaces(32)
    images = nonfaces.images
    assert images.shape[1:] == (32, 32, 3) and images.dtype == np.uint8 and len(images) > 300
    assert np.std(images.reshape(len(images), -1).mean(1)) > 20  # dark skies to white pages
    assert np.array_equal(images, load_nonfaces(32).images)  # the same tiles every time
