"""Tests for ONNX export (emodistill.export): parity with PyTorch, dynamic axes, runs, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from emodistill.cli import main
from emodistill.core.errors import InputError
from emodistill.models import build_model
from emodistill.models.members import TorchMember
from emodistill.models.onnx import STATISTICS_KEY, OnnxMember, export_member
from emodistill.run import Run, export_run, parse_generation
from emodistill.tasks import PAPER_TASKS

TOLERANCE = 1e-4  # the bound on |ONNX - PyTorch|


def random_inputs(model, B: int, L: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    cfg = model.config
    generator = torch.Generator().manual_seed(seed)
    frames = torch.rand(B, L, 3, cfg.input_size, cfg.input_size, generator=generator)
    audio = None
    if cfg.audio:
        audio = torch.randn(B, L, cfg.n_mels, cfg.audio_frames, generator=generator)
    return frames, audio


def assert_close(onnx_logits: dict, torch_logits: dict, onnx_state, torch_state) -> None:
    for task in PAPER_TASKS:
        np.testing.assert_allclose(onnx_logits[task.name], torch_logits[task.name].numpy(),
                                   rtol=0, atol=TOLERANCE, err_msg=task.name)
    np.testing.assert_allclose(onnx_state, torch_state.numpy(), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("modality", ["v", "va"])
def test_onnx_matches_pytorch_with_carried_state_and_any_batch_or_length(
    modality: str, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = build_model("tiny", modality).eval()
    member = OnnxMember(export_member(model, tmp_path / "member.onnx"), threads=1)
    assert member.config == model.config
    # Two chunks of one stream (the second continues the first's GRU state), then another
    # batch size and length through the same file.
    torch_state = onnx_state = None
    for B, L, seed in ((2, 5, 1), (2, 3, 2), (3, 1, 3)):
        frames, audio = random_inputs(model, B, L, seed)
        if torch_state is not None and torch_state.shape[1] != B:
            torch_state = onnx_state = None  # a new stream with a different batch
        with torch.no_grad():
            torch_logits, torch_state = model.forward_stateful(frames, audio, torch_state)
        audio_np = None if audio is None else audio.numpy()
        onnx_logits, onnx_state = member.forward_stateful(frames.numpy(), audio_np, onnx_state)
        assert onnx_logits["VA"].shape == (B, L, 40) and onnx_state.shape == (len(PAPER_TASKS), B, 32)
        assert_close(onnx_logits, torch_logits, onnx_state, torch_state)


def test_streaming_in_chunks_equals_one_pass(tmp_path: Path) -> None:
    torch.manual_seed(1)
    member = OnnxMember(export_member(build_model("tiny").eval(), tmp_path / "m.onnx"))
    frames = np.random.default_rng(0).random((1, 6, 3, 32, 32), np.float32)
    whole, _ = member.forward_stateful(frames)
    first, state = member.forward_stateful(frames[:, :4])
    second, _ = member.forward_stateful(frames[:, 4:], None, state)
    for task in PAPER_TASKS:
        chunked = np.concatenate([first[task.name], second[task.name]], axis=1)
        np.testing.assert_allclose(chunked, whole[task.name], atol=1e-5)


def test_exported_features_are_the_density_inputs(tmp_path: Path) -> None:
    # The OOD score reads the backbone's features and stage statistics, never the sound's, in both backends.
    torch.manual_seed(2)
    model = build_model("tiny", "va").eval()
    member = OnnxMember(export_member(model, tmp_path / "m.onnx"))
    rng = np.random.default_rng(3)
    frames = rng.random((2, 3, 3, 32, 32), np.float32)
    audio = rng.normal(size=(2, 3, 64, 64)).astype(np.float32)
    logits, _, features = member.forward_with_features(frames, audio, None)
    _, _, from_torch = TorchMember(model, torch.device("cpu")).forward_with_features(frames, audio, None)
    assert features.shape == (6, model.config.density_dim) and model.config.density_dim > model.config.feature_dim
    np.testing.assert_allclose(features, from_torch, atol=1e-4)
    assert member.has_features
    np.testing.assert_allclose(logits["AU"], member.forward_stateful(frames, audio)[0]["AU"], atol=1e-6)
    # A file whose stage statistics are of another version (or unstated) is not read for them.
    exported = onnx.load(str(tmp_path / "m.onnx"))
    kept = [p for p in exported.metadata_props if p.key != STATISTICS_KEY]
    del exported.metadata_props[:]
    exported.metadata_props.extend(kept)
    onnx.save(exported, str(tmp_path / "old.onnx"))
    assert not OnnxMember(tmp_path / "old.onnx").has_features


def test_exported_graph_has_the_documented_interface(tmp_path: Path) -> None:
    path = export_member(build_model("tiny", "va").eval(), tmp_path / "m.onnx")
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["frames", "audio", "hidden"]
    assert [o.name for o in graph.output] == ["AU", "EXPR", "VA", "features", "hidden_out"]
    frames_dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert frames_dims == ["batch", "length", 3, 32, 32]
    assert not list(tmp_path.glob("*.tmp")), "a temporary file was left behind"


def test_export_leaves_the_model_as_it_was(tmp_path: Path) -> None:
    model = build_model("tiny").train().to(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_member(model, tmp_path / "m.onnx")
    assert model.training
    assert model.backbone.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_export_run_writes_every_member_of_the_last_generation(tiny_run: Path) -> None:
    paths = export_run(tiny_run)
    assert paths == [tiny_run / "teacher" / "onnx" / f"member-{m}.onnx" for m in range(2)]
    run = Run(tiny_run)
    frames = np.random.default_rng(1).random((2, 4, 3, 32, 32), np.float32)
    for m, path in enumerate(paths):
        with torch.no_grad():
            torch_logits, torch_state = run.load_member(0, m).forward_stateful(
                torch.from_numpy(frames))
        onnx_logits, onnx_state = OnnxMember(path).forward_stateful(frames)
        assert_close(onnx_logits, torch_logits, onnx_state, torch_state)


def test_export_command_prints_each_file(tiny_run: Path, tmp_path: Path, capsys) -> None:
    assert main(["export", str(tiny_run), "--generation", "teacher"]) == 0
    paths = [tiny_run / "teacher" / "onnx" / f"member-{m}.onnx" for m in range(2)]
    printed = capsys.readouterr().out.splitlines()
    assert printed[:2] == [str(p) for p in paths]
    assert "exported 2 members" in printed[-1]
    custom = export_run(tiny_run, 0, out_dir=tmp_path / "elsewhere")
    assert [p.name for p in custom] == ["member-0.onnx", "member-1.onnx"]


def test_export_refuses_folders_that_are_not_runs_and_missing_generations(
    tiny_run: Path, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="is not an emodistill run"):
        export_run(tmp_path)
    with pytest.raises(InputError, match="student1 is not finished"):
        export_run(tiny_run, 1)


def test_parse_generation() -> None:
    assert [parse_generation(t) for t in (None, "teacher", "student2", "3")] == [None, 0, 2, 3]
    for bad in ("student", "student0", "tea"):
        with pytest.raises(InputError, match="unknown generation"):
            parse_generation(bad)


def test_onnx_member_refuses_bad_files_and_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such ONNX file"):
        OnnxMember(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf")
    with pytest.raises(InputError, match=r"junk\.onnx is not a loadable ONNX model"):
        OnnxMember(junk)
    path = export_member(build_model("tiny", "va").eval(), tmp_path / "va.onnx")
    foreign = onnx.load(str(path))
    del foreign.metadata_props[:]
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(InputError, match="was not exported by emodistill"):
        OnnxMember(tmp_path / "foreign.onnx")
    member = OnnxMember(path)
    frames = np.zeros((1, 2, 3, 32, 32), np.float32)
    with pytest.raises(InputError, match=r"expects frames of shape \(B, L, 3, 32, 32\)"):
        member.forward_stateful(np.zeros((1, 2, 3, 48, 48), np.float32))
    with pytest.raises(InputError, match="needs a spectrogram"):
        member.forward_stateful(frames)
    with pytest.raises(InputError, match="cannot take these inputs"):
        member.forward_stateful(frames, np.zeros((1, 2, 64, 32), np.float32))


def test_the_ensemble_is_the_final_generation_and_its_first_members(tiny_run: Path) -> None:
    from emodistill.run import Ensemble

    run = Run(tiny_run)
    final = Ensemble.open(tiny_run)
    assert final.generation == run.finished_generations()[-1] and final.size == run.config().members
    teacher = Ensemble.open(tiny_run / "teacher", size=1)
    assert (teacher.generation, teacher.size, teacher.name) == (0, 1, f"{tiny_run.name}/teacher (1 member)")
    assert len(teacher.models()) == 1
    with pytest.raises(InputError, match="--members must be between 1 and"):
        Ensemble.open(tiny_run, size=run.config().members + 1)
    probs = {"EXPR": np.array([[[0.2, 0.8]], [[0.6, 0.4]]])}  # two members, one frame
    np.testing.assert_allclose(Ensemble.average(probs)["EXPR"], [[0.4, 0.6]])
