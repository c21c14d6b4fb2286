"""Every speed lever of issue 11 against the plain fp32 path (emodistill.models.speed, and the
background thread of emodistill.data.frontend.decode).

Members are random "tiny" EMENets whose BatchNorm statistics come from a pass over random
frames, so activations have the scale of a trained network's.
"""

from __future__ import annotations

import threading
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torch import nn

from emodistill.core.errors import InputError
from emodistill.data.frontend import iter_frames, prefetch
from emodistill.models.emenet import build_model
from emodistill.models.members import TorchMember
from emodistill.models.mobilefacenet import shared_tail_blocks
from emodistill.models.speed import (
    Levers,
    StackedHeads,
    StackedMembers,
    bf16_fast,
    cpu_flags,
    fold_batch_norm,
    torch_threads,
)
from emodistill.tasks import PAPER_TASKS

# Measured on the 2-core AVX2 machine (tiny, demo and EMENet-V members): stacked vs separate
# fp32 logits differ by at most 1.5e-7 (the stacked GRU sums in another order; the CNNs agree
# bit for bit), with folded BatchNorm by 2.6e-6; bf16 probabilities by up to 0.010 on random
# members (over 20 seeds of 16 frames: median of the maximum 0.0055, 99th percentile 0.0035).
FP32_TOL = 1e-5
FOLD_TOL = 1e-4
BF16_PROB_TOL = 1e-2


def calibrated(seed: int, modality: str | None = None, preset: str = "tiny") -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(preset, modality)
    cfg = model.config
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a plain average over the calibration pass
    model.train()
    with torch.no_grad():
        audio = torch.randn(4, 8, cfg.n_mels, cfg.audio_frames) if cfg.audio else None
        model.encode(torch.rand(4, 8, 3, cfg.input_size, cfg.input_size), audio)
    return model.eval()


def inputs(model: nn.Module, B: int, L: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    cfg = model.config
    rng = np.random.default_rng(seed)
    frames = rng.random((B, L, 3, cfg.input_size, cfg.input_size), dtype=np.float32)
    audio = rng.standard_normal((B, L, cfg.n_mels, cfg.audio_frames), dtype=np.float32) if cfg.audio else None
    return frames, audio


def max_difference(stacked: dict[str, np.ndarray], m: int, single: dict[str, np.ndarray]) -> float:
    assert set(stacked) == set(single) == {t.name for t in PAPER_TASKS}
    return max(float(np.abs(stacked[k][m] - single[k]).max()) for k in single)


# ------------------------------------------------------------------------ flags and levers


def test_cpu_flags_and_bf16_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import emodistill.models.speed as speed

    monkeypatch.setattr(speed, "cpu_flags", cpu_flags)  # this machine's flags, not conftest's fp32 CPU
    flags = cpu_flags()
    assert isinstance(flags, list) and all(isinstance(f, str) for f in flags)
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert cpu_flags(info) == ["avx2", "avx512_bf16", "avx512f", "fpu"]
    assert isinstance(cpu_flags(tmp_path / "absent"), list)  # the platform fallback
    assert not bf16_fast(["avx2", "avx512f", "fma"])
    assert bf16_fast(["avx512_bf16"]) and bf16_fast(["amx_bf16"]) and bf16_fast(["amx_tile"])
    assert bf16_fast() == bf16_fast(flags)


def test_levers_record_and_auto() -> None:
    plain = Levers()
    assert plain.as_dict() == {"batched": False, "bf16": False, "fold_bn": False,
                               "decode_thread": False, "model_threads": 0}
    assert Levers.auto(["avx2"], threads=2) == Levers(batched=True, bf16=False, fold_bn=True, decode_thread=True)
    assert Levers.auto(["amx_tile"]).as_dict()["bf16"] is True
    # bf16 members on matrix units leave one core to the decode-and-detect thread; fp32 ones keep every core.
    assert Levers.auto(["amx_tile"], threads=2).model_threads == 1
    assert Levers.auto(["amx_tile"], threads=8).model_threads == 7
    assert Levers.auto(["amx_tile"], threads=1).model_threads == 0
    assert Levers.auto(["avx2"], threads=8).model_threads == 0
    # bf16 without matrix units: the members are the slower stage and keep every thread.
    assert Levers.auto(["avx512_bf16"], threads=2) == Levers(batched=True, bf16=True, fold_bn=True, decode_thread=True)
    assert Levers.auto(["amx_tile"], threads=2, bf16=False) == Levers.auto(["avx2"], threads=2)  # --fp32
    with pytest.raises(InputError, match="model_threads"):
        Levers(model_threads=-1)


def test_torch_threads_sets_and_restores_the_setting() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="inside"), torch_threads(1):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with torch_threads(0):  # 0: as it is
        assert torch.get_num_threads() == before


# ------------------------------------------------------------------------ stacked members


@pytest.mark.parametrize("modality", ["v", "va"])
def test_stacked_members_match_separate_members(modality: str) -> None:
    models = [calibrated(seed, modality) for seed in range(3)]
    separate = [TorchMember(m, torch.device("cpu")) for m in models]
    stacked = StackedMembers(models)
    first, audio = inputs(models[0], B=2, L=5, seed=0)
    second, audio2 = inputs(models[0], B=2, L=3, seed=1)
    # Chunk 1 from zero states (given as M Nones), chunk 2 carrying the stacked state on.
    logits, hidden, features = stacked.forward_with_features(first, audio, [None] * 3)
    logits2, hidden2 = stacked.forward_stateful(second, audio2, hidden)
    assert logits["VA"].shape == (3, 2, 5, 40) and features.shape == (3, 10, models[0].config.density_dim)
    assert hidden.shape == (3, len(PAPER_TASKS), 2, models[0].config.gru_hidden)
    for m, member in enumerate(separate):
        one, state, one_features = member.forward_with_features(first, audio, None)
        one2, state2 = member.forward_stateful(second, audio2, state)
        assert max_difference(logits, m, one) < FP32_TOL
        assert float(np.abs(features[m] - one_features).max()) < FP32_TOL
        assert max_difference(logits2, m, one2) < FP32_TOL
        assert float((hidden2[m] - state2).abs().max()) < FP32_TOL
    # Per-member states in a list are the same as the stacked tensor.
    again, _ = stacked.forward_stateful(second, audio2, list(hidden))
    assert all(np.array_equal(again[k], logits2[k]) for k in logits2)


@pytest.mark.parametrize("fold_bn", [False, True])
def test_members_sharing_a_frozen_front_run_it_once_with_the_same_outputs(fold_bn: bool) -> None:
    # A frozen-backbone run: every member is member 0 below its own last 2 blocks and heads.
    models = [calibrated(0) for _ in range(3)]
    for seed, model in enumerate(models[1:], start=1):
        torch.manual_seed(seed)
        model.backbone.reset_tail(2)
        for head in model.heads.values():
            head.gru.reset_parameters()
    assert shared_tail_blocks([m.backbone for m in models]) == 2
    assert shared_tail_blocks([calibrated(s).backbone for s in (0, 1)]) is None
    stacked = StackedMembers(models, fold_bn=fold_bn)
    assert stacked.backbone.shared_tail == 2
    frames, _ = inputs(models[0], B=2, L=4, seed=3)
    logits, _, features = stacked.forward_with_features(frames, None, [None] * 3)
    tolerance = 1e-4 if fold_bn else FP32_TOL
    for m, model in enumerate(models):
        one, _, one_features = TorchMember(model, torch.device("cpu")).forward_with_features(frames, None, None)
        assert max_difference(logits, m, one) < tolerance
        assert float(np.abs(features[m] - one_features).max()) < tolerance


def test_stacked_heads_match_each_members_decode() -> None:
    models = [calibrated(seed) for seed in range(2)]
    heads = StackedHeads(models)
    features = torch.randn(2, 3, 4, models[0].config.head_input_dim)
    with torch.inference_mode():
        logits, state = heads(features)
        for m, model in enumerate(models):
            one, one_state = model.decode(features[m])
            assert max(float((logits[k][m] - one[k]).abs().max()) for k in one) < FP32_TOL
            assert float((state[m] - one_state).abs().max()) < FP32_TOL


def test_folded_batch_norm_is_within_tolerance() -> None:
    models = [calibrated(seed) for seed in range(2)]
    frames, _ = inputs(models[0], B=1, L=6, seed=2)
    plain, _ = StackedMembers(models).forward_stateful(frames, None, None)
    folded, _ = StackedMembers(models, fold_bn=True).forward_stateful(frames, None, None)
    assert 0 < max(float(np.abs(plain[k] - folded[k]).max()) for k in plain) < FOLD_TOL
    backbone = fold_batch_norm(models[0].backbone)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())


def test_bf16_probabilities_are_within_1e_2_of_fp32() -> None:
    """Runs on any CPU: without native bf16 the arithmetic is emulated (slowly)."""
    models = [calibrated(seed) for seed in range(2)]
    frames, _ = inputs(models[0], B=1, L=16, seed=3)
    fp32, _ = StackedMembers(models).forward_stateful(frames, None, None)
    bf16, _ = StackedMembers(models, bf16=True).forward_stateful(frames, None, None)
    for m in range(2):
        p32 = PAPER_TASKS.activate({k: v[m] for k, v in fp32.items()})
        p16 = PAPER_TASKS.activate({k: v[m] for k, v in bf16.items()})
        worst = max(float(np.abs(p32[k] - p16[k]).max()) for k in p32)
        assert 0 < worst < BF16_PROB_TOL


def test_stacking_refuses_what_it_cannot_stack() -> None:
    with pytest.raises(InputError, match="one config"):
        StackedMembers([build_model("tiny"), build_model("demo")])
    stacked = StackedMembers([build_model("tiny")] * 2)
    frames, _ = inputs(stacked, B=1, L=2, seed=0)
    with pytest.raises(InputError, match="states for 2 members"):
        stacked.forward_stateful(frames, None, [None])


# ------------------------------------------------------------------------ detection every k frames


@pytest.fixture(scope="module")
def face_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from emodistill.bench import write_face_video

    return write_face_video(tmp_path_factory.mktemp("speed") / "face.mp4", 14, (384, 288))


# ------------------------------------------------------------------------ background decoding


def test_threaded_decoding_yields_the_same_frames(face_video: Path) -> None:
    plain = list(iter_frames(face_video))
    threaded = list(iter_frames(face_video, thread=True))
    assert [f.index for f in threaded] == [f.index for f in plain] == list(range(14))
    assert [f.timestamp for f in threaded] == [f.timestamp for f in plain]
    assert all(np.array_equal(a.rgb, b.rgb) for a, b in zip(plain, threaded, strict=True))


def _truncated_video(folder: Path) -> Path:
    """A video that opens (index first) and breaks while decoding frame 6."""
    from emodistill.bench import face_frame

    whole = folder / "whole.mp4"
    with av.open(str(whole), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 256, "yuv420p"
        for k in range(12):
            frame = av.VideoFrame.from_ndarray(face_frame(k, 12, (320, 256)), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with av.open(str(whole)) as container:
        spans = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    cut = folder / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: spans[5][0] + spans[5][1] // 2])
    return cut


def test_threaded_decoding_raises_the_same_error_after_the_same_frames(tmp_path: Path) -> None:
    cut = _truncated_video(tmp_path)
    outcomes = []
    for thread in (False, True):
        seen = []
        with pytest.raises(InputError, match=r"cut\.mp4: .*truncated") as caught:
            seen.extend(f.index for f in iter_frames(cut, thread=thread))
        outcomes.append((seen, str(caught.value)))
    assert outcomes[0] == outcomes[1]
    with pytest.raises(InputError, match=r"absent\.mp4: no such video file"):
        next(iter_frames(tmp_path / "absent.mp4", thread=True))


def test_prefetch_keeps_order_and_stops_on_early_exit() -> None:
    closed = threading.Event()

    def numbers():
        try:
            yield from range(1000)
        finally:
            closed.set()

    items = prefetch(numbers(), depth=2)
    assert [next(items) for _ in range(5)] == [0, 1, 2, 3, 4]
    items.close()  # the consumer leaves early, the producer is blocked on a full queue
    assert closed.wait(5.0)
    assert not any(t.name == "emodistill-prefetch" and t.is_alive() for t in threading.enumerate())

    def failing():
        yield from (1, 2, 3)
        raise ValueError("decoder broke at item 3")

    got = []
    with pytest.raises(ValueError, match="decoder broke at item 3"):
        got.extend(prefetch(failing()))
    assert got == [1, 2, 3]
    assert list(prefetch(iter([]))) == []
    with pytest.raises(ValueError, match="depth"):
        next(prefetch(iter([1]), depth=0))


@pytest.mark.parametrize("what", ["video", "crops"])
def test_predict_with_every_output_preserving_lever_equals_the_plain_path(tiny_run: Path, tiny_data: Path,
                                                                         what: str) -> None:
    from emodistill.predict import Predictor
    from emodistill.predict.tables import largest_difference

    source = (sorted((tiny_data / "videos").rglob("*.mp4"))[0] if what == "video"
              else sorted(p for p in (tiny_data / "cropped_aligned").iterdir() if p.is_dir())[0])
    quiet = {"device": "cpu", "log": lambda _: None}
    plain = Predictor(tiny_run, levers=Levers(), **quiet).predict(source)
    before = torch.get_num_threads()
    levers = Levers(batched=True, fold_bn=True, decode_thread=True, model_threads=1)
    fast = Predictor(tiny_run, levers=levers, **quiet).predict(source)
    assert torch.get_num_threads() == before  # the members' thread count is set around their passes only
    assert plain["face"].sum() > 0
    assert list(plain.columns) == list(fast.columns) and len(plain) == len(fast)
    assert (plain["face"] == fast["face"]).all()
    assert largest_difference(plain, fast) <= 1e-4  # folded BatchNorm: logits within 2.6e-6 measured
    assert (plain.loc[plain["face"] == 1, "expression"] == fast.loc[fast["face"] == 1, "expression"]).all()
