"""Tests for clip sampling, batch gathering and sequential clips (emodistill.data.sampler)."""

from __future__ import annotations

import numpy as np
import pytest

from emodistill.core.errors import InputError
from emodistill.data.dataset import Split
from emodistill.data.sampler import ClipSampler, gather, sequential_clips
from emodistill.tasks import PAPER_TASKS


def make_split(lengths: list[int], valid_rows: dict[str, list[int]], audio: bool = False) -> Split:
    """Videos of the given lengths; each task valid on the listed rows. Frame r is filled with r."""
    n = sum(lengths)
    rows = np.arange(n)
    masks = {t.name: np.isin(rows, valid_rows.get(t.name, [])) for t in PAPER_TASKS}
    return Split(
        name="train",
        frames=np.broadcast_to(rows[:, None, None, None] % 256, (n, 4, 4, 3)).astype(np.uint8),
        labels={"AU": np.tile(rows[:, None], (1, 12)).astype(np.float32), "EXPR": rows % 7,
                "VA": np.stack([rows, -rows], axis=1).astype(np.float32)},
        masks=masks,
        video=np.repeat(np.arange(len(lengths)), lengths).astype(np.int32),
        frame_index=np.concatenate([np.arange(k) for k in lengths]).astype(np.int32),
        video_names=[f"video{i}" for i in range(len(lengths))],
        audio=np.broadcast_to(rows[:, None, None], (n, 64, 64)).astype(np.float32)
        if audio else None,
    )


def test_each_batch_holds_clips_per_task_of_one_video_each() -> None:
    split = make_split([40, 30, 5], {"AU": list(range(10, 21)), "EXPR": list(range(0, 75, 3))})
    sampler = ClipSampler(split, length=16, clips_per_task=3, seed=0)
    assert sampler.tasks == ("AU", "EXPR") and sampler.skipped == ("VA",)
    assert sampler.batch_tasks == ("AU",) * 3 + ("EXPR",) * 3
    batches = list(sampler.batches(20))
    assert len(batches) == 20
    assert any((np.diff(index) == 0).any() for index in batches)  # the 5-row video was drawn
    for index in batches:
        assert index.shape == (6, 16) and index.dtype == np.int64
        for clip, name in zip(index, sampler.batch_tasks, strict=True):
            assert split.masks[name][clip].any()
            assert len(set(split.video[clip].tolist())) == 1  # one video
            steps = np.diff(clip)
            # Consecutive rows; a video shorter than the clip repeats its last row at the end.
            assert set(steps.tolist()) <= {0, 1} and (np.diff(steps) <= 0).all()


def test_candidates_are_the_windows_with_a_valid_label() -> None:
    # Video 0 has rows 0..5, video 1 rows 6..7 (shorter than a clip of 3).
    split = make_split([6, 2], {"EXPR": [0], "AU": [5], "VA": [7]})
    sampler = ClipSampler(split, length=3, clips_per_task=2, seed=1)
    seen = {name: set() for name in sampler.tasks}
    for index in sampler.batches(10):
        for clip, name in zip(index, sampler.batch_tasks, strict=True):
            seen[name].add(tuple(clip.tolist()))
    # Only window [0, 1, 2] holds row 0, only [3, 4, 5] holds row 5, and video 1 gives one
    # padded clip [6, 7, 7].
    assert seen == {"AU": {(3, 4, 5)}, "EXPR": {(0, 1, 2)}, "VA": {(6, 7, 7)}}


def test_windows_are_drawn_uniformly() -> None:
    split = make_split([10], {"AU": list(range(10))})
    sampler = ClipSampler(split, length=4, clips_per_task=1, seed=5)
    starts = [int(index[0, 0]) for index in sampler.batches(700)]
    counts = np.bincount(starts, minlength=7)
    assert counts.size == 7  # windows start at rows 0..6 only
    assert counts.min() > 60 and counts.max() < 140  # 100 each on average


def test_batches_are_fixed_by_the_seed() -> None:
    split = make_split([50, 20], {"AU": list(range(70)), "VA": list(range(0, 70, 5))})

    def draw(seed: int) -> np.ndarray:
        return np.stack(list(ClipSampler(split, 8, 4, seed=seed).batches(5)))

    np.testing.assert_array_equal(draw(3), draw(3))
    assert not np.array_equal(draw(3), draw(4))
    sampler = ClipSampler(split, 8, 4, seed=3)
    first, second = next(sampler.batches(1)), next(sampler.batches(1))
    assert not np.array_equal(first, second)  # epochs continue the stream


def test_tasks_can_be_chosen_and_none_present_is_an_error() -> None:
    split = make_split([20], {"AU": [3], "EXPR": [4]})
    assert ClipSampler(split, 4, 2, tasks=["EXPR"]).tasks == ("EXPR",)
    with pytest.raises(InputError, match="no valid label for VA"):
        ClipSampler(split, 4, 2, tasks=["VA"])
    with pytest.raises(ValueError, match="unknown task 'FACE'"):
        ClipSampler(split, 4, 2, tasks=["FACE"])


def test_gather_indexes_every_array() -> None:
    split = make_split([10, 10], {"AU": [1, 2], "EXPR": [12]}, audio=True)
    split.truth = {t.name: np.arange(20 * t.n_logits, dtype=np.float32).reshape(20, -1)
                   for t in PAPER_TASKS}
    index = np.array([[0, 1, 2], [12, 13, 13]])
    batch = gather(split, index)
    assert batch["frames"].shape == (2, 3, 4, 4, 3) and batch["frames"].dtype == np.uint8
    np.testing.assert_array_equal(batch["frames"][:, :, 0, 0, 0], index)
    assert batch["labels"]["AU"].shape == (2, 3, 12) and batch["labels"]["VA"].shape == (2, 3, 2)
    np.testing.assert_array_equal(batch["labels"]["EXPR"], index % 7)
    np.testing.assert_array_equal(batch["masks"]["AU"], [[False, True, True], [False] * 3])
    np.testing.assert_array_equal(batch["masks"]["EXPR"], [[False] * 3, [True, False, False]])
    assert batch["audio"].shape == (2, 3, 64, 64)
    np.testing.assert_array_equal(batch["audio"][:, :, 5, 5], index)
    np.testing.assert_array_equal(batch["truth"]["EXPR"][1, 0], split.truth["EXPR"][12])
    assert "audio" not in gather(make_split([4], {"AU": [0]}), index[:, :1] % 4)


def test_sequential_clips_cover_every_frame_once() -> None:
    split = make_split([5, 3], {"AU": [0]})
    clips = sequential_clips(split, 2)
    assert [c.tolist() for c in clips] == [[0, 1], [2, 3], [4], [5, 6], [7]]
    big = make_split([37, 16, 1, 20], {"AU": [0]})
    clips = sequential_clips(big, 16)
    np.testing.assert_array_equal(np.concatenate(clips), np.arange(len(big)))
    assert all(len(set(big.video[c].tolist())) == 1 and len(c) <= 16 for c in clips)
