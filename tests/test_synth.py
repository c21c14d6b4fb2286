"""Tests for the affect simulator (emodistill.data.synth) and the contact sheet (data.preview)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from scipy import stats
from scipy.special import expit

from emodistill.core.errors import InputError
from emodistill.data.preview import contact_sheet
from emodistill.data.synth import SynthSummary, generate
from emodistill.data.synth.affect import (
    AffectConfig,
    label_truth,
    random_temperament,
    sample_labels,
    simulate_affect,
    va_bin_probs,
)
from emodistill.data.synth.audio import SAMPLE_RATE, mouth_opening, plan_speech
from emodistill.data.synth.face import CROP_CENTRE_Y, CROP_SPAN, SUPERSAMPLE, draw_face
from emodistill.data.synth.identity import Identity, Pose, random_identity
from emodistill.tasks import (
    AU,
    PAPER_AU_POSITIVE_RATE,
    PAPER_EXPR_RATE,
    PAPER_TASKS,
    VA_BINS,
    va_to_bin,
)

SPLITS = ("Train_Set", "Validation_Set")
HEADERS = {
    "AU": "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26",
    "EXPR": "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise",
    "VA": "valence,arousal",
}
VIDEOS, FRAMES, SIZE = 6, 20, 48


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthSummary]:
    root = tmp_path_factory.mktemp("synth") / "data"
    return root, generate(root, videos=VIDEOS, frames=FRAMES, size=SIZE, seed=1, preview=True, progress=False)


@pytest.fixture(scope="module")
def meta(data: tuple[Path, SynthSummary]) -> dict:
    return json.loads((data[0] / "synth.json").read_text())



def render_face(who: Identity, au: np.ndarray, size: int) -> np.ndarray:
    """One face alone, framed like an aligned crop: (size, size, 3) BGR uint8."""
    big = size * SUPERSAMPLE
    canvas = np.full((big, big, 3), (120, 130, 140), np.uint8)
    scale = big / CROP_SPAN
    draw_face(canvas, who, au, Pose(big / 2, big / 2 - CROP_CENTRE_Y * scale, scale, 0.0, 0.0, 0.0))
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)

def _annotated(root: Path) -> dict[tuple[str, str], Path]:
    """(task, video) -> annotation file."""
    return {
        (task.name, path.stem): path
        for task in PAPER_TASKS
        for path in (root / "annotations" / task.annotation_dir).glob("*/*.txt")
    }


def _affect_sample(subjects: int, frames: int, seed: int) -> list[dict[str, np.ndarray]]:
    """True label laws of simulated subjects (no rendering)."""
    rng = np.random.default_rng(seed)
    truths = []
    for _ in range(subjects):
        mouth = mouth_opening(plan_speech(rng, frames / 30), frames, 30)
        truths.append(label_truth(simulate_affect(rng, frames, 30, random_temperament(rng), mouth)))
    return truths


# Layout ---------------------------------------------------------------------------------------
def test_every_task_has_videos_in_both_splits_with_headers_and_one_line_per_frame(data, meta):
    root, summary = data
    for task in PAPER_TASKS:
        for split in SPLITS:
            files = sorted((root / "annotations" / task.annotation_dir / split).glob("*.txt"))
            assert files, f"no {task.name} videos in {split}"
            for path in files:
                lines = path.read_text().splitlines()
                assert lines[0] == HEADERS[task.name]
                assert len(lines) - 1 == meta["videos"][path.stem]["frames"]
                assert task.name in meta["videos"][path.stem]["tasks"]
    assert summary.videos == VIDEOS == len(meta["videos"])
    assert {s: n for s, n in summary.subsets["AU"].items()} == meta["counts"]["subsets"]["AU"]


def test_annotation_values_are_labels_or_invalid_markers(data):
    root, _ = data
    invalid_seen = 0
    for (task, _video), path in _annotated(root).items():
        rows = np.array([[float(v) for v in line.split(",")] for line in path.read_text().splitlines()[1:]])
        invalid = (rows == {"AU": -1, "EXPR": -1, "VA": -5}[task]).all(axis=1)
        invalid_seen += int(invalid.sum())
        valid = rows[~invalid]
        if task == "AU":
            assert valid.shape[1] == 12 and set(np.unique(valid)) <= {0.0, 1.0}
        elif task == "EXPR":
            assert valid.shape[1] == 1 and set(np.unique(valid)) <= set(range(7))
        else:
            assert valid.shape[1] == 2 and np.abs(valid).max() <= 1.0
    assert invalid_seen == sum(json.loads((root / "synth.json").read_text())["counts"]["invalid"].values())


def test_crops_exist_for_every_frame_except_the_recorded_missing_ones(data, meta):
    root, summary = data
    written = 0
    for video, info in meta["videos"].items():
        jpgs = {p.name for p in (root / "cropped_aligned" / video).glob("*.jpg")}
        expected = {f"{i + 1:05d}.jpg" for i in range(info["frames"]) if i not in info["missing_crops"]}
        assert jpgs == expected
        written += len(jpgs)
        crop = cv2.imread(str(root / "cropped_aligned" / video / sorted(jpgs)[0]))
        assert crop.shape == (SIZE, SIZE, 3)
    assert written == summary.crops and summary.crops + summary.missing_crops == summary.frames


def test_left_right_pair_shares_one_raw_video(data, meta):
    root, summary = data
    pairs = [v for v in meta["videos"] if v.endswith("_left")]
    assert pairs
    for left in pairs:
        base = left.removesuffix("_left")
        assert meta["videos"][left]["frames"] == meta["videos"][f"{base}_right"]["frames"]
        assert (root / "videos" / "batch1" / f"{base}.mp4").exists()
    assert len(list((root / "videos" / "batch1").glob("*.mp4"))) == summary.raw_videos == VIDEOS - len(pairs)


def test_mp4_decodes_with_the_expected_frames_and_a_16khz_audio_track(data, meta):
    root, _ = data
    info = next(i for v, i in meta["videos"].items() if v.endswith("_left"))
    with av.open(str(root / "videos" / "batch1" / f"{info['raw']}.mp4")) as container:
        assert float(container.streams.video[0].average_rate) == 30
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    assert len(frames) == info["frames"]
    assert frames[0].shape[1] == 2 * frames[0].shape[0]  # two subjects side by side
    with av.open(str(root / "videos" / "batch1" / f"{info['raw']}.mp4")) as container:
        audio = container.streams.audio[0]
        assert audio.rate == SAMPLE_RATE
        samples = np.concatenate([f.to_ndarray().ravel() for f in container.decode(audio=0)])
    assert abs(len(samples) - info["frames"] / 30 * SAMPLE_RATE) <= 2048 + 1024  # AAC framing and priming
    assert np.abs(samples).max() > 0.05  # someone speaks


def test_truth_is_saved_for_every_frame_and_its_distributions_sum_to_one(data, meta):
    root, _ = data
    for video, info in meta["videos"].items():
        with np.load(root / "truth" / f"{video}.npz") as truth:
            n = info["frames"]
            assert truth["AU"].shape == (n, 12) and truth["EXPR"].shape == (n, 7) and truth["VA"].shape == (n, 40)
            assert truth["valence_mean"].shape == truth["arousal_mean"].shape == (n,)
            assert all(truth[k].dtype == np.float32 for k in ("AU", "EXPR", "VA"))
            assert ((truth["AU"] >= 0) & (truth["AU"] <= 1)).all()
            np.testing.assert_allclose(truth["EXPR"].sum(1), 1.0, atol=1e-5)
            np.testing.assert_allclose(truth["VA"][:, :20].sum(1), 1.0, atol=1e-5)
            np.testing.assert_allclose(truth["VA"][:, 20:].sum(1), 1.0, atol=1e-5)


def written_files(root: Path) -> list[Path]:
    """The data files a simulation wrote (annotations, truth, crops), relative to `root`."""
    return sorted(
        p.relative_to(root)
        for folder in ("annotations", "truth", "cropped_aligned")
        for p in (root / folder).rglob("*")
        if p.is_file()
    )


def assert_same_files(root: Path, again: Path) -> list[Path]:
    files = written_files(root)
    assert files == written_files(again)
    for name in files:
        assert (root / name).read_bytes() == (again / name).read_bytes(), name
    return files


def test_same_seed_gives_identical_files_and_another_seed_differs(data, tmp_path):
    root, _ = data
    again = generate(tmp_path / "again", videos=VIDEOS, frames=FRAMES, size=SIZE, seed=1, progress=False)
    other = generate(tmp_path / "other", videos=VIDEOS, frames=FRAMES, size=SIZE, seed=2, progress=False)
    files = assert_same_files(root, again.root)
    annotations = [p for p in files if p.parts[0] == "annotations"]
    assert any(
        not (other.root / p).exists() or (other.root / p).read_bytes() != (root / p).read_bytes() for p in annotations
    )


def test_rendering_in_worker_processes_writes_the_same_files(data):
    """Each raw video draws from its own seeded streams, so two processes write what one does."""
    root, summary = data
    parallel = generate(root.parent / "parallel", videos=VIDEOS, frames=FRAMES, size=SIZE, seed=1, progress=False,
                        workers=2)
    assert_same_files(root, parallel.root)
    assert parallel.crops == summary.crops
    assert json.loads((parallel.root / "synth.json").read_text()) == json.loads((root / "synth.json").read_text())
    with pytest.raises(InputError, match="workers must be at least 1"):
        generate(root.parent / "none", videos=VIDEOS, frames=FRAMES, size=SIZE, progress=False, workers=0)


def test_generate_rejects_too_few_videos_and_a_used_folder(data, tmp_path):
    with pytest.raises(InputError, match="at least 6"):
        generate(tmp_path / "few", videos=3, frames=5, size=32, progress=False)
    with pytest.raises(InputError, match="not an empty folder"):
        generate(data[0], videos=VIDEOS, frames=5, size=32, progress=False)


# Label laws -----------------------------------------------------------------------------------
def test_va_bins_integrate_the_gaussian_and_put_clipped_mass_in_the_end_bins():
    mean, std = np.array([0.97, -0.42]), np.array([0.1, 0.05])
    probs = va_bin_probs(mean, std)
    norm = stats.norm(mean[0], std[0])
    assert probs[0, 19] == pytest.approx(norm.sf(0.9))  # [0.9, 1] plus everything above 1
    assert probs[0, 18] == pytest.approx(norm.cdf(0.9) - norm.cdf(0.8))
    assert probs[1, 5] == pytest.approx(stats.norm(-0.42, 0.05).cdf(-0.4) - stats.norm(-0.42, 0.05).cdf(-0.5))
    np.testing.assert_allclose(probs.sum(1), 1.0)


def test_au_truth_is_a_sigmoid_of_intensity_around_the_threshold():
    config = AffectConfig()
    rng = np.random.default_rng(0)
    track = simulate_affect(rng, 60, 30, random_temperament(rng), np.zeros(60), config)
    expected = expit((track.au - np.array(config.au_threshold)) / config.au_temperature)
    np.testing.assert_allclose(label_truth(track, config)["AU"], expected, rtol=1e-6)


@pytest.mark.parametrize("coherence", [0.0, AffectConfig().label_coherence])
def test_sampled_labels_follow_the_truth(coherence):
    config = AffectConfig(label_coherence=coherence)
    truths = _affect_sample(40, 100, seed=5)  # 4,000 frames, labels drawn many times below
    draws = 25
    rng = np.random.default_rng(6)
    labels = [sample_labels(t, rng, config) for _ in range(draws) for t in truths]
    truth = {k: np.concatenate([t[k] for t in truths]) for k in ("AU", "EXPR", "VA")}
    n = draws * len(truth["AU"])
    # Frames of one chain are correlated (coherent annotator noise): widen the binomial error by
    # the AR(1) variance factor (1 + rho) / (1 - rho), an upper bound for the thresholded labels.
    inflation = (1 + coherence) / (1 - coherence)
    au_rate = np.concatenate([lab["AU"] for lab in labels]).mean(0)
    p = truth["AU"].mean(0)
    assert np.all(np.abs(au_rate - p) < 4.5 * np.sqrt(p * (1 - p) * inflation / n) + 1e-4)
    expr_counts = np.bincount(np.concatenate([lab["EXPR"] for lab in labels]), minlength=7)
    va = np.concatenate([lab["VA"] for lab in labels])
    va_counts = np.concatenate([np.bincount(va_to_bin(va[:, d]), minlength=VA_BINS) for d in range(2)])
    for counts, expected in (
        (expr_counts, truth["EXPR"].mean(0)),
        (va_counts[:20], truth["VA"][:, :20].mean(0)),
        (va_counts[20:], truth["VA"][:, 20:].mean(0)),
    ):
        keep = expected * n > 20  # chi-square needs enough expected counts per class
        observed, wanted = counts[keep], expected[keep] / expected[keep].sum() * counts[keep].sum()
        chi2 = (((observed - wanted) ** 2) / wanted).sum() / inflation
        assert chi2 < stats.chi2.ppf(0.9999, keep.sum() - 1), (counts, expected * n)


def test_coherent_labels_flicker_less_than_independent_ones():
    truths = _affect_sample(10, 100, seed=7)
    flips = {}
    for rho in (0.0, 0.9):
        rng = np.random.default_rng(8)
        au = np.concatenate([sample_labels(t, rng, AffectConfig(label_coherence=rho))["AU"] for t in truths])
        flips[rho] = np.abs(np.diff(au, axis=0)).sum()
    assert flips[0.9] < 0.5 * flips[0.0]


def test_label_marginals_follow_the_papers_imbalance_within_a_factor_of_two():
    truths = _affect_sample(300, 120, seed=11)
    au = np.concatenate([t["AU"] for t in truths]).mean(0)
    expr = np.concatenate([t["EXPR"] for t in truths]).mean(0)
    for got, target in ((au, np.array(PAPER_AU_POSITIVE_RATE)), (expr, np.array(PAPER_EXPR_RATE))):
        ratio = got / target
        assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio


# Rendering ------------------------------------------------------------------------------------
REGION = {
    "AU1": "upper",
    "AU2": "upper",
    "AU4": "upper",
    "AU6": "middle",
    "AU7": "middle",
    "AU10": "lower",
    "AU12": "lower",
    "AU15": "lower",
    "AU23": "lower",
    "AU24": "lower",
    "AU25": "lower",
    "AU26": "lower",
}


@pytest.mark.parametrize("name", AU.names)
def test_each_au_visibly_changes_its_own_region_of_the_face(name):
    rows = {
        "upper": slice(0, int(0.4 * SIZE)),
        "middle": slice(int(0.35 * SIZE), int(0.6 * SIZE)),
        "lower": slice(int(0.62 * SIZE), SIZE),
    }
    for seed in range(3):
        who = random_identity(np.random.default_rng(seed))
        rest = render_face(who, np.zeros(12), SIZE).astype(float)
        au = np.zeros(12)
        au[AU.names.index(name)] = 1.0
        change = np.abs(render_face(who, au, SIZE).astype(float) - rest).mean(axis=2)  # (S, S)
        by_region = {region: change[r].mean() for region, r in rows.items()}
        assert by_region[REGION[name]] == max(by_region.values()), by_region
        assert change[rows[REGION[name]]].max() > 20  # some pixels change a lot


def test_au12_at_full_intensity_moves_the_mouth_not_the_brows():
    who = random_identity(np.random.default_rng(4))
    smile = np.zeros(12)
    smile[AU.names.index("AU12")] = 1.0
    change = np.abs(render_face(who, smile, SIZE).astype(int) - render_face(who, np.zeros(12), SIZE).astype(int))
    mouth, brows = change[int(0.62 * SIZE) :].mean(), change[: int(0.4 * SIZE)].mean()
    assert mouth > 0.3 and brows == 0


# Preview --------------------------------------------------------------------------------------
def test_preview_png_is_written_and_missing_layout_is_an_input_error(data, tmp_path):
    root, _ = data
    sheet = cv2.imread(str(root / "preview.png"))
    assert sheet is not None and sheet.shape[0] > 200 and sheet.shape[1] > 500
    out = contact_sheet(root, tmp_path / "sheet.png", n=4, seed=3)
    assert cv2.imread(str(out)) is not None
    with pytest.raises(InputError, match="is no Aff-wild2 layout this version knows"):
        contact_sheet(tmp_path, tmp_path / "x.png")


def test_preview_names_the_file_and_line_of_a_bad_annotation(tmp_path):
    bad = tmp_path / "bad"
    (bad / "annotations" / "EXPR_Set" / "Train_Set").mkdir(parents=True)
    (bad / "annotations" / "EXPR_Set" / "Train_Set" / "v.txt").write_text("Neutral\n0\nhappy\n")
    (bad / "cropped_aligned" / "v").mkdir(parents=True)
    for i in (1, 2):
        cv2.imwrite(str(bad / "cropped_aligned" / "v" / f"{i:05d}.jpg"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(InputError, match=r"v\.txt:3: expr 'happy' is not a number"):
        contact_sheet(bad, tmp_path / "bad.png")
