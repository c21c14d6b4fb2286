"""predict at its edges: bad inputs, models and options in one sentence, the stored OOD threshold's
false-alarm rate, --plot onto a file, the old --backend flag, the audio windows made per chunk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from test_media import FPS

from emodistill.core.errors import InputError
from emodistill.data.audio import log_mel_per_frame
from emodistill.predict.command import predict_command
from emodistill.predict.predictor import Predictor
from emodistill.predict.sources import AudioTrack


def test_audio_windows_made_per_chunk_equal_the_whole_track():
    rng = np.random.default_rng(0)
    samples = rng.normal(0, 0.1, 16000 * 3).astype(np.float32)
    fps = 25.0  # 640 samples per frame: chunk starts fall on the 10 ms hop grid
    whole = log_mel_per_frame(samples, 16000, 75, fps)
    track = AudioTrack(samples, 16000, fps)
    for indices in (np.arange(0, 8), np.arange(30, 46), np.arange(70, 75)):
        assert track.windows(indices) == pytest.approx(whole[indices], abs=1e-4)


def make_bad_input(folder: Path, name: str) -> Path:
    """One kind of unusable input, named `name` in `folder` (absent.mp4 is not created)."""
    path = folder / name
    if name == "notes.mp4":
        path.write_text("hello\n")
    elif name == "zero.mp4":
        path.write_bytes(b"")
    elif name == "none.mp4":  # an mp4 container with a video stream header and no frame
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=FPS)
            stream.width, stream.height = 64, 64
            container.start_encoding()
    elif name == "broken.png":
        path.write_bytes(b"\x89PNG nothing")
    elif name == "hollow":
        path.mkdir()
    return path


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("notes.mp4", r"notes\.mp4: not a readable video"),
        ("zero.mp4", r"zero\.mp4: the file is empty \(0 bytes\)"),
        ("none.mp4", r"none\.mp4: the file holds no video stream"),
        ("broken.png", r"broken\.png: not a readable image"),
        ("hollow", r"hollow: the folder holds no images"),
        ("absent.mp4", r"absent\.mp4: no such file or folder"),
    ],
)
def test_bad_inputs_are_one_sentence(tiny_run: Path, tmp_path: Path, name: str, message: str):
    path = make_bad_input(tmp_path, name)
    with pytest.raises(InputError, match=message) as caught:
        Predictor(tiny_run, log=lambda s: None).predict(path)
    assert "\n" not in str(caught.value)


def test_bad_models_and_options_are_one_sentence(tiny_run: Path, gap_video: Path, tmp_path: Path):
    (tmp_path / "not-a-run").mkdir()
    cases = [
        (lambda: Predictor(tmp_path / "not-a-run"), r"not-a-run is not an emodistill run"),
        (lambda: Predictor(tmp_path / "nowhere"), r"nowhere: no such model folder"),
        (lambda: Predictor(tiny_run, members=3), r"--members must be between 1 and 2"),
        (lambda: Predictor(tiny_run, generation="student1"), r"student1 is not finished"),
        (lambda: Predictor(tiny_run, runtime="tpu"), r"unknown runtime 'tpu'"),
        (lambda: predict_command(gap_video, tiny_run, out=tmp_path / "x.txt"),
         r"x\.txt: the output must end in \.csv or \.parquet"),
        (lambda: predict_command(gap_video, tiny_run, members="some"),
         r"--members must be all or a number"),
    ]
    for make, message in cases:
        with pytest.raises(InputError, match=message) as caught:
            make()
        assert "\n" not in str(caught.value)


def test_predict_flags_validation_crops_at_the_false_alarm_rate_evaluate_chose(
        tiny_run: Path, tiny_data: Path, tmp_path: Path):
    """One way of scoring OOD: `evaluate` sets the threshold at 5% false alarms on validation
    frames, and `predict` on those same frames' crop folders (whole videos, GRU state carried)
    flags about 5% of them. Tolerance: 5 +/- 2.5 percentage points (quantile ties and JPEG
    round trips aside, the two compute the same score)."""
    from emodistill.evaluation.density import FALSE_ALARM
    from emodistill.evaluation.evaluate import evaluate_run
    from emodistill.report.writer import write_report

    run = shutil.copytree(tiny_run, tmp_path / "run")
    report = evaluate_run(run, torch.device("cpu"), ood_limit=10_000, mc_passes=2, progress=False,
                          log=lambda s: None)
    write_report(report, run / "report")
    synth = json.loads((tiny_data / "synth.json").read_text())
    val_videos = [name for name, video in synth["videos"].items() if video["split"] == "val"]
    root = tmp_path / "val" / "cropped_aligned"
    for name in val_videos:
        shutil.copytree(tiny_data / "cropped_aligned" / name, root / name)
    table = Predictor(run, batch_frames=8, log=lambda s: None).predict(tmp_path / "val")
    flagged = table.loc[table["face"] == 1, "ood_flag"].astype(bool)
    assert len(flagged) > 100
    assert abs(flagged.mean() - FALSE_ALARM) <= 0.025, flagged.mean()


def test_plot_to_an_existing_file_is_refused_before_any_work(tiny_run, gap_video, tmp_path, capsys):
    from emodistill.cli import main

    taken = tmp_path / "figures.png"
    taken.write_bytes(b"an earlier figure")
    table = tmp_path / "rows.csv"
    status = main(["predict", str(gap_video), "--model", str(tiny_run), "--out", str(table),
                   "--plot", str(taken), "--quiet", "--device", "cpu"])
    assert status == 2
    assert "figures.png: --plot names a folder for the figures, and this is an existing file" in capsys.readouterr().err
    assert not table.exists() and taken.read_bytes() == b"an earlier figure"


def test_predict_takes_the_old_backend_flag_as_the_runtime_with_a_note(tiny_run, gap_video, tmp_path, capsys):
    from emodistill.cli import main

    table = tmp_path / "rows.csv"
    assert main(["predict", str(gap_video), "--model", str(tiny_run), "--out", str(table), "--backend", "torch",
                 "--members", "1", "--quiet", "--device", "cpu"]) == 0
    assert "predict's --backend is now --runtime" in capsys.readouterr().err
    assert table.exists()
