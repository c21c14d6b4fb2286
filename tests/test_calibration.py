"""Temperature scaling (fit, apply, test-time cross-validation), MC dropout on a small model, and the
prior shift and per-logit calibration that `predict` applies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import softmax
from torch import nn

from emodistill.core.checkpoints import save_arrays
from emodistill.core.errors import InputError
from emodistill.evaluation.baselines.mc_dropout import enable_mc_dropout, mc_dropout_probs
from emodistill.evaluation.baselines.temperature_scaling import (
    apply_temperatures,
    fit_temperatures,
    temperature_scaling_cv,
)
from emodistill.evaluation.calibration import (
    FAMILIES,
    Calibration,
    Fit,
    calibrate,
    choose_family,
    fit_affine,
    fit_family,
    folds_by_video,
    generation_shift,
    mixed,
)
from emodistill.evaluation.metrics import nll_binary, nll_categorical
from emodistill.tasks import AU, EXPR, PAPER_TASKS, VA, VA_BINS, VA_CENTRES


def overconfident_data(n: int, scale: float, seed: int = 0):
    """Labels drawn from softmax(z); the logits handed over are scale * z (T* = scale)."""
    rng = np.random.default_rng(seed)
    z = {task.name: rng.normal(0, 1.5, (n, task.n_logits)) for task in PAPER_TASKS}
    p_au = 1 / (1 + np.exp(-z["AU"]))
    labels = {"AU": (rng.random((n, 12)) < p_au).astype(np.float32),
              "EXPR": np.array([rng.choice(7, p=row) for row in softmax(z["EXPR"], axis=1)])}
    va_bins = [[rng.choice(VA_BINS, p=softmax(z["VA"][i, d * 20:(d + 1) * 20]))
                for d in range(2)] for i in range(n)]
    labels["VA"] = VA_CENTRES[np.array(va_bins)]  # (n, 2) values at their bin centres
    return {name: scale * value for name, value in z.items()}, labels


def test_fit_recovers_the_temperature():
    logits, labels = overconfident_data(3000, scale=2.5)
    temperatures = fit_temperatures(PAPER_TASKS, logits, labels, {})
    assert temperatures["AU"].shape == (12,) and temperatures["EXPR"].shape == (1,)
    assert temperatures["VA"].shape == (2,)
    for name in ("AU", "EXPR", "VA"):
        np.testing.assert_allclose(temperatures[name], 2.5, rtol=0.15)


def test_fit_lowers_nll_and_identity_at_one():
    logits, labels = overconfident_data(600, scale=3.0, seed=1)
    ones = {task.name: np.ones(task.n_groups) for task in PAPER_TASKS}
    raw = apply_temperatures(PAPER_TASKS, logits, ones)
    np.testing.assert_allclose(raw["EXPR"], softmax(logits["EXPR"], axis=1))
    np.testing.assert_allclose(raw["AU"], 1 / (1 + np.exp(-logits["AU"])))
    calibrated = apply_temperatures(PAPER_TASKS, logits, fit_temperatures(PAPER_TASKS, logits, labels, {}))
    assert nll_binary(labels["AU"], calibrated["AU"]) < nll_binary(labels["AU"], raw["AU"])
    assert (nll_categorical(labels["EXPR"], calibrated["EXPR"])
            < nll_categorical(labels["EXPR"], raw["EXPR"]))
    # each VA dimension's 20 probabilities still sum to 1
    np.testing.assert_allclose(calibrated["VA"].reshape(-1, 2, 20).sum(-1), 1.0)


def test_fit_ignores_masked_rows_and_tasks_without_labels():
    logits, labels = overconfident_data(400, scale=2.0, seed=2)
    masks = {"EXPR": np.arange(400) < 200}
    labels["EXPR"][200:] = -1  # invalid, must not be read
    temperatures = fit_temperatures(PAPER_TASKS, logits, {"EXPR": labels["EXPR"]}, masks)
    assert np.isfinite(temperatures["EXPR"]).all()
    np.testing.assert_array_equal(temperatures["AU"], 1.0)
    masks["EXPR"][:] = False
    np.testing.assert_array_equal(fit_temperatures(PAPER_TASKS, logits, labels, masks)["EXPR"], 1.0)


def test_cross_validation_never_scores_a_row_with_its_own_label():
    logits, labels = overconfident_data(200, scale=2.0, seed=3)
    logits, labels = {"EXPR": logits["EXPR"]}, {"EXPR": labels["EXPR"]}
    before = temperature_scaling_cv(PAPER_TASKS, logits, labels, {}, seed=5)["EXPR"]
    assert before.shape == (200, 7)
    changed = {"EXPR": labels["EXPR"].copy()}
    changed["EXPR"][17] = (changed["EXPR"][17] + 3) % 7
    after = temperature_scaling_cv(PAPER_TASKS, logits, changed, {}, seed=5)["EXPR"]
    np.testing.assert_array_equal(before[17], after[17])  # row 17's label only fits the other half
    moved = ~np.isclose(before, after).all(axis=1)
    assert 0 < moved.sum() <= 100  # the other half, whose temperature changed


class TinyModel(nn.Module):
    """Frames (B, L, 8) -> logits dict, with a BatchNorm and a dropout like the real heads."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(8)
        self.dropout = nn.Dropout(0.5)
        self.heads = nn.ModuleDict({t.name: nn.Linear(8, t.n_logits) for t in PAPER_TASKS})

    def forward(self, frames: torch.Tensor, audio: torch.Tensor | None = None):
        features = self.norm(frames.flatten(0, 1)).unflatten(0, frames.shape[:2])  # (B, L, 8)
        if audio is not None:
            features = features + audio
        features = self.dropout(features)
        return {name: head(features) for name, head in self.heads.items()}


def test_mc_dropout_samples_and_restores_the_model():
    torch.manual_seed(0)
    model = TinyModel()
    model.train()
    model.norm.running_mean.fill_(0.3)
    frames = torch.randn(2, 3, 8)
    stats = model.norm.running_mean.clone(), model.norm.running_var.clone()
    rng_state = torch.get_rng_state()
    one = mc_dropout_probs(model, frames, passes=1, seed=0)
    other = mc_dropout_probs(model, frames, passes=1, seed=1)
    assert not torch.allclose(one["EXPR"], other["EXPR"])  # dropout really samples
    again = mc_dropout_probs(model, frames, passes=10, seed=0)
    assert torch.equal(again["AU"], mc_dropout_probs(model, frames, passes=10)["AU"])
    assert torch.equal(torch.get_rng_state(), rng_state)  # the caller's random state is kept
    assert all(m.training for m in model.modules())  # modes restored
    assert torch.equal(model.norm.running_mean, stats[0])
    assert torch.equal(model.norm.running_var, stats[1])
    np.testing.assert_allclose(again["VA"].reshape(2, 3, 2, 20).sum(-1), 1.0, rtol=1e-6)
    assert again["AU"].shape == (2, 3, 12)
    # audio reaches forward as the second argument
    with_audio = mc_dropout_probs(model, frames, audio=torch.ones(2, 3, 8), passes=1)
    assert not torch.allclose(with_audio["EXPR"], one["EXPR"])


def test_enable_mc_dropout_modes():
    model = TinyModel().eval()
    with enable_mc_dropout(model):
        assert model.dropout.training and not model.norm.training and not model.training
    assert not any(m.training for m in model.modules())
    with pytest.raises(ValueError, match="no dropout"), enable_mc_dropout(nn.Linear(2, 2)):
        pass


def test_mc_dropout_mean_matches_manual_average():
    model = TinyModel().eval()
    frames = torch.randn(1, 2, 8)
    averaged = mc_dropout_probs(model, frames, passes=3, seed=7)
    torch.manual_seed(7)
    with torch.no_grad(), enable_mc_dropout(model):
        manual = sum(torch.softmax(model(frames)["EXPR"], -1) for _ in range(3)) / 3
    torch.testing.assert_close(averaged["EXPR"], manual)


def test_mc_dropout_encodes_once_and_matches_full_passes() -> None:
    """EMENet's fast path (CNN once, heads `passes` times) equals full stochastic passes."""
    from emodistill.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    frames = torch.rand(2, 3, 3, 32, 32)
    fast = mc_dropout_probs(model, frames, passes=4, seed=5)

    class FullPasses(torch.nn.Module):  # hides encode/decode, so every pass runs the CNN
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return self.inner(x)

    slow = mc_dropout_probs(FullPasses(), frames, passes=4, seed=5)
    for name in fast:
        torch.testing.assert_close(fast[name], slow[name], atol=1e-6, rtol=1e-5)
    single = {k: v for k, v in mc_dropout_probs(model, frames, passes=1, seed=5).items()}
    assert any(not torch.allclose(fast[k], single[k]) for k in fast), "dropout had no effect"


# ------------------------------------------------------------ prior shift and per-logit calibration


def test_the_prior_shift_follows_the_losses_generation_by_generation():
    au_weights, expr_weights = np.array([3.0, 0.5] + [1.0] * 10), np.array([0.2, 2.0, 1, 1, 1, 1, 1])
    # AU: Eq. 2 and Eq. 9 both weight the positive term, so each generation adds log w again.
    for generation in range(3):
        assert generation_shift(AU, au_weights, generation) == pytest.approx((1 + generation) * np.log(au_weights))
    # EXPR: the teachers' weighted CE shifts once; students copy it by an unweighted KL (Eq. 10).
    for generation in range(3):
        assert generation_shift(EXPR, expr_weights, generation) == pytest.approx(np.log(expr_weights))
    assert generation_shift(VA, np.array([1.0]), 2) == pytest.approx(np.zeros(40))
    assert not VA.calibrated and AU.calibrated and EXPR.calibrated


def shifted_expression_data(n: int, seed: int = 0):
    """Labels drawn from softmax(z), and logits z + log w: what a member trained with class
    weights w gives where the truth is z (the optimum of the weighted cross entropy)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.0, (n, 7)) + np.log(np.array([0.5, 0.05, 0.05, 0.05, 0.2, 0.1, 0.05]))
    labels = np.array([rng.choice(7, p=row) for row in softmax(z, axis=1)])
    weights = 1 / np.bincount(labels, minlength=7).clip(1) * n / 7
    return z, z + np.log(weights), labels, weights


def test_undoing_the_prior_shift_and_fitting_biases_beats_the_prior():
    z, logits, labels, weights = shifted_expression_data(4000)
    fit, score = slice(0, 2000), slice(2000, None)
    prior = np.bincount(labels[fit], minlength=7) / 2000
    raw_nll = nll_categorical(labels[score], softmax(logits[score], axis=1))
    prior_nll = nll_categorical(labels[score], np.broadcast_to(prior, (2000, 7)))
    assert raw_nll > prior_nll  # the reweighted member is worse than knowing nothing
    shift = np.log(weights)
    fitted = fit_affine(EXPR, logits[fit] - shift, labels[fit])
    calibrated = nll_categorical(labels[score], softmax(fitted.scale * (logits[score] - shift) + fitted.bias, axis=1))
    truth = nll_categorical(labels[score], softmax(z[score], axis=1))
    assert calibrated < prior_nll and calibrated == pytest.approx(truth, abs=0.02)
    # One temperature cannot move a base rate: it stays above the calibrated NLL.
    temperatures = fit_temperatures(PAPER_TASKS, {"EXPR": logits[fit]}, {"EXPR": labels[fit]}, {})
    tempered = apply_temperatures(PAPER_TASKS, {"EXPR": logits[score]}, temperatures)["EXPR"]
    assert nll_categorical(labels[score], tempered) > calibrated + 0.02


def test_the_family_is_the_one_that_scores_best_on_other_videos():
    # Logits that carry nothing but the base rates: any fit only adds noise, so nothing is fitted.
    rng = np.random.default_rng(2)
    rates = np.array([0.5, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05])
    labels = rng.choice(7, size=60, p=rates)
    video = np.repeat(np.arange(12), 5)
    assert choose_family(EXPR, np.log(rates) + rng.normal(0, 0.3, (60, 7)), labels, video) == "shift"
    # Three times overconfident: a temperature (1/3) fixes it (the per-logit fit may add noise's
    # worth on top, so either is fine), and it is fitted.
    z, _, many, _ = shifted_expression_data(3000, seed=3)
    videos = np.repeat(np.arange(100), 30)
    assert choose_family(EXPR, 3.0 * z, many, videos) in ("temperature", "affine")
    tempered = fit_family(EXPR, 3.0 * z, many, "temperature")
    assert tempered.scale == pytest.approx(np.full(7, 1 / 3), abs=0.03) and np.array_equal(tempered.bias, np.zeros(7))
    assert tempered.mix == 0.0
    # Overconfident and shifted by class weights the shift does not know of: only biases fix it.
    weights = np.array([0.2, 3.0, 3.0, 1.0, 1.0, 5.0, 5.0])
    assert choose_family(EXPR, 3.0 * z + np.log(weights), many, videos) == "affine"


def test_cross_fitted_calibration_never_scores_a_frame_with_its_own_label(tmp_path):
    z, _, labels, weights = shifted_expression_data(600, seed=1)
    logits = 2.5 * z + np.log(weights)  # overconfident as well as shifted: a fit earns its keep
    video = np.repeat(np.arange(30), 20)
    member_logits = [{"EXPR": logits.astype(np.float32)}, {"EXPR": (logits + 0.3).astype(np.float32)}]
    shifts = {"EXPR": np.log(weights)}
    calibration, crossed = calibrate(PAPER_TASKS, member_logits, {"EXPR": labels}, {}, shifts, video)
    # Relabel one video: its own cross-fitted logits stay as they were, other folds' move.
    changed = labels.copy()
    changed[video == 7] = (labels[video == 7] + 3) % 7
    _, again = calibrate(PAPER_TASKS, member_logits, {"EXPR": changed}, {}, shifts, video)
    fold = folds_by_video(video)
    own = video == 7
    assert np.array_equal(again[0]["EXPR"][own], crossed[0]["EXPR"][own])
    assert not np.allclose(again[0]["EXPR"][fold != fold[own][0]], crossed[0]["EXPR"][fold != fold[own][0]])
    # Every video lies in one fold, and the folds share the videos out.
    assert all(len(set(fold[video == v])) == 1 for v in range(30))
    assert sorted(np.bincount(fold)) == [120] * 5
    # The stored calibration is each member's fit on all frames, and reads back the same.
    calibration.save(tmp_path / "calibration.safetensors")
    loaded = Calibration.load(tmp_path / "calibration.safetensors", PAPER_TASKS)
    stacked = {"EXPR": np.stack([m["EXPR"][:5] for m in member_logits])}
    applied = loaded.apply(stacked)["EXPR"]
    for m in range(2):
        shifted = member_logits[m]["EXPR"] - shifts["EXPR"]
        fitted = fit_family(EXPR, shifted, labels, choose_family(EXPR, shifted, labels, video))
        assert not np.allclose(fitted.scale, 1.0)
        assert applied[m] == pytest.approx(fitted.logits(EXPR, stacked["EXPR"][m] - shifts["EXPR"]), abs=1e-5)


def wrong_on_some_videos(videos: int, seed: int):
    """EXPR frames, 30 per video, labels drawn from softmax(z); the member reads z on most videos
    but is confidently wrong (three times another draw's logits) on a quarter of them."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (videos * 30, 7)) + np.log([0.4, 0.1, 0.05, 0.05, 0.2, 0.1, 0.1])
    labels = np.array([rng.choice(7, p=row) for row in softmax(z, axis=1)])
    video = np.repeat(np.arange(videos), 30)
    wrong = np.isin(video, rng.choice(videos, videos // 4, replace=False))
    logits = np.where(wrong[:, None], 3.0 * rng.normal(0, 1.5, z.shape), z)
    return logits, labels, video


def test_a_member_confidently_wrong_on_whole_videos_is_shrunk_toward_the_base_rates():
    logits, labels, video = wrong_on_some_videos(80, seed=4)
    assert choose_family(EXPR, logits, labels, video) == "shrunk"
    shrunk = fit_family(EXPR, logits, labels, "shrunk")
    assert 0.05 < shrunk.mix < 0.9
    assert shrunk.rates[0] == pytest.approx(np.bincount(labels, minlength=7) / len(labels), abs=0.01)
    # On new videos it beats the temperature alone, and the prior.
    new_logits, new_labels, _ = wrong_on_some_videos(80, seed=5)
    tempered = fit_family(EXPR, logits, labels, "temperature")
    prior = np.broadcast_to(np.bincount(labels, minlength=7) / len(labels), new_logits.shape)

    def nll(fitted):
        return nll_categorical(new_labels, np.exp(fitted.log_probs(EXPR, new_logits).numpy()[:, 0]))

    assert nll(shrunk) < nll(tempered) - 0.02
    assert nll(shrunk) < nll_categorical(new_labels, prior) - 0.05


def test_shrunk_logits_give_the_shrunk_probabilities_and_old_files_read_unshrunk(tmp_path):
    rng = np.random.default_rng(6)
    for task in (AU, EXPR):
        z = rng.normal(0, 3, (50, task.n_logits))
        rates = rng.dirichlet(np.ones(task.n_classes), task.n_groups)
        fitted = Fit(rng.uniform(0.5, 2, task.n_logits), rng.normal(0, 1, task.n_logits), 0.3, rates)
        own = np.exp(task.log_activate(torch.from_numpy(fitted.scale * z + fitted.bias)).numpy())
        expected = 0.7 * own + 0.3 * rates
        probs = task.activate(torch.from_numpy(fitted.logits(task, z)).double()).numpy()
        assert task.distributions(probs) == pytest.approx(expected, abs=1e-5)
    # A calibration saved before the base rates' share: scale and bias only, applied as before.
    scale, bias, shift = rng.uniform(0.5, 2, (2, 7)), rng.normal(0, 1, (2, 7)), rng.normal(0, 1, 7)
    save_arrays(tmp_path / "old.safetensors", {"EXPR.shift": shift, "EXPR.scale": scale, "EXPR.bias": bias})
    z = rng.normal(0, 2, (2, 5, 7))
    applied = Calibration.load(tmp_path / "old.safetensors", PAPER_TASKS).apply({"EXPR": z})["EXPR"]
    assert applied == pytest.approx(scale[:, None] * (z - shift) + bias[:, None], abs=1e-5)
    save_arrays(tmp_path / "bad.safetensors", {"EXPR.shift": shift, "EXPR.scale": scale, "EXPR.bias": bias,
                                               "EXPR.mix": np.zeros(3)})
    with pytest.raises(InputError, match=r"bad\.safetensors.*wrong shape"):
        Calibration.load(tmp_path / "bad.safetensors", PAPER_TASKS)


def test_a_member_always_wrong_gets_a_finite_fit_of_some_family():
    # Sure of every class but the right one: the best share of the base rates is 1, where the
    # share's optimum lies at infinity; no fit may turn into NaN and leave no family to choose.
    rng = np.random.default_rng(9)
    labels = rng.choice(7, size=66, p=[0.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    logits = -8.0 * np.eye(7)[labels] + rng.normal(0, 0.1, (66, 7))
    video = np.repeat(np.arange(9), 8)[:66]
    shrunk = fit_family(EXPR, logits, labels, "shrunk")
    assert shrunk.mix > 0.99 and np.isfinite(shrunk.log_probs(EXPR, logits).numpy()).all()
    assert choose_family(EXPR, logits, labels, video) in FAMILIES
    # The mixture and its gradient stay finite at a share of 0 or 1 (as float64 rounds them).
    log_probs = torch.log_softmax(torch.randn(4, 1, 7, dtype=torch.float64), -1)
    rates = np.full((1, 7), 1 / 7)
    for share_logit in (-60.0, 60.0):
        mix_logit = torch.tensor(share_logit, dtype=torch.float64, requires_grad=True)
        out = mixed(log_probs, mix_logit, rates)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(mix_logit.grad)
        assert torch.allclose(out, log_probs if share_logit < 0 else torch.log(torch.from_numpy(rates)).expand(4, 1, 7))
