"""The feature-density OOD score: Mahalanobis distances against hand-computed ones, thresholds
against the false-alarm rate they promise, the stored file, the real non-face pictures, and the
stage statistics the backbone notes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis
from sklearn.covariance import ledoit_wolf

from emodistill.core.checkpoints import load_arrays, save_arrays
from emodistill.core.errors import InputError
from emodistill.data.ood import load_nonfaces
from emodistill.evaluation.density import (
    FALSE_ALARM,
    EnsembleDensity,
    distance,
    ensemble_thresholds,
    fit_gaussians,
    fit_member,
    threshold,
)
from emodistill.evaluation.ood import held_out_flag_rate
from emodistill.models import build_model
from emodistill.models.mobilefacenet import SPREAD_FLOOR, STAGE_ENDS, statistics_dim


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


def test_a_member_score_is_its_largest_scaled_part_distance():
    rng = np.random.default_rng(4)
    sizes = (3, 5)
    fit, val = rng.normal(size=(80, 8)), rng.normal(size=(400, 8))
    member = fit_member(fit, rng.integers(0, 2, 80), val, sizes)
    assert member.sizes == sizes and len(member.parts) == 2
    by_hand = [distance(g, x) for g, x in zip(member.parts, (val[:, :3], val[:, 3:]), strict=True)]
    # Each part's scale is its own threshold on validation: alone it flags the false-alarm rate.
    for part, scale in zip(by_hand, member.scales, strict=True):
        assert scale == pytest.approx(threshold(part))
        assert np.mean(part > scale) == pytest.approx(FALSE_ALARM, abs=0.005)
    expected = np.maximum(by_hand[0] / member.scales[0], by_hand[1] / member.scales[1])
    assert member.score(val) == pytest.approx(expected)
    # A frame unusual in one part only is flagged by that part.
    odd = val[:1].copy()
    odd[0, 3:] += 40
    assert member.score(odd)[0] > 10 and member.distances(odd)[0, 0] == pytest.approx(by_hand[0][0])
    # Columns past the parts are not read; too few columns are one sentence.
    assert member.score(np.hstack([val, rng.normal(size=(400, 2))])) == pytest.approx(expected)
    with pytest.raises(ValueError, match="expected density inputs"):
        member.score(val[:, :7])


def test_held_out_flag_rate_refits_the_scales_on_each_half():
    # Two parts of one member; the validation videos alike: about the false-alarm rate.
    rng = np.random.default_rng(6)
    video = np.repeat(np.arange(200), 20)
    distances = rng.gamma(3.0, size=(1, 2, len(video))) * np.array([1.0, 50.0])[None, :, None]
    assert held_out_flag_rate(distances, video) == pytest.approx(FALSE_ALARM, abs=0.015)


def test_a_stored_density_scores_as_it_was_fitted(tmp_path: Path):
    rng = np.random.default_rng(5)
    members = tuple(fit_member(rng.normal(size=(60, 6)), rng.integers(0, 3, 60), rng.normal(size=(40, 6)), (4, 2))
                    for _ in range(2))
    density = EnsembleDensity(members, np.array([1.5, 1.2]))
    density.save(tmp_path / "density.safetensors")
    loaded = EnsembleDensity.load(tmp_path / "density.safetensors")
    features = rng.normal(size=(2, 7, 6))
    assert loaded.score(features) == pytest.approx(density.score(features))
    assert loaded.score(features[:1]) == pytest.approx(members[0].score(features[0]))
    assert (loaded.threshold_for(1), loaded.threshold_for(2)) == (1.5, 1.2)
    # Fitted on the stage statistics of the version before (raw spreads; no version stored): refused.
    arrays = load_arrays(tmp_path / "density.safetensors")
    del arrays["statistics_version"]
    save_arrays(tmp_path / "raw-spreads.safetensors", arrays)
    with pytest.raises(InputError, match=r"raw-spreads\.safetensors .*earlier version.*emodistill evaluate"):
        EnsembleDensity.load(tmp_path / "raw-spreads.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match=r"broken\.safetensors"):
        EnsembleDensity.load(tmp_path / "broken.safetensors")


def test_a_features_only_density_of_the_earlier_version_scores_as_then(tmp_path: Path):
    # The earlier file: "member-<m>.whiten/.means", shrinkage (T,), no scales; its scores were
    # the members' mean distance of the visual features, and the stage statistics after them
    # in today's inputs are not read.
    rng = np.random.default_rng(8)
    gaussians = [fit_gaussians(rng.normal(size=(50, 4)), rng.integers(0, 2, 50)) for _ in range(2)]
    arrays = {"thresholds": np.array([1.1, 1.0]), "false_alarm": np.array([0.05]),
              "shrinkage": np.array([g.shrinkage for g in gaussians])}
    for m, g in enumerate(gaussians):
        arrays[f"member-{m}.whiten"], arrays[f"member-{m}.means"] = g.whiten, g.means
    save_arrays(tmp_path / "old.safetensors", arrays)
    loaded = EnsembleDensity.load(tmp_path / "old.safetensors")
    inputs = rng.normal(size=(2, 9, 10))
    then = np.mean([distance(g, x[:, :4]) for g, x in zip(gaussians, inputs, strict=True)], axis=0)
    assert loaded.score(inputs) == pytest.approx(then)


def test_nonface_pictures_are_real_and_varied():
    nonfaces = load_nonfaces(32)
    images = nonfaces.images
    assert images.shape[1:] == (32, 32, 3) and images.dtype == np.uint8 and len(images) > 300
    assert np.std(images.reshape(len(images), -1).mean(1)) > 20  # dark skies to white pages
    assert np.array_equal(images, load_nonfaces(32).images)  # the same tiles every time


@pytest.mark.parametrize("preset", ["tiny", "demo"])
def test_stage_statistics_are_each_stage_ends_channel_mean_and_log_spread(preset: str) -> None:
    # The density's second part, as the backbone notes it on its way (a whole pass, or a front
    # and a tail).
    torch.manual_seed(0)
    model = build_model(preset)
    backbone, size = model.backbone.eval(), model.config.input_size
    x = torch.rand(3, 3, size, size)
    ends = [backbone.stem_dw if end < 0 else backbone.blocks[end] for end in STAGE_ENDS]
    maps: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: maps.append(out)) for layer in ends]
    statistics: list[torch.Tensor] = []
    with torch.no_grad():
        features = backbone(x, statistics)
    for hook in hooks:
        hook.remove()
    assert len(statistics) == len(STAGE_ENDS) == 4 and torch.equal(features, backbone(x))
    for noted, out in zip(statistics, maps, strict=True):
        torch.testing.assert_close(noted, torch.cat([out.mean((2, 3)), torch.log(out.std((2, 3)) + SPREAD_FLOOR)], 1))
    assert torch.cat(statistics, 1).shape == (3, statistics_dim(model.config.width_mult))
    for tail in (0, 1, 2, 3):  # a front and a tail note the same, in the same order
        split: list[torch.Tensor] = []
        with torch.no_grad():
            backbone.tail(backbone.front(x, tail, split), tail, split)
        torch.testing.assert_close(torch.cat(split, 1), torch.cat(statistics, 1))
