"""Tests of the EMENet models: shapes, paper counts, GRU state, input errors, weight loading.

Forward passes use the `tiny` preset; the paper presets are built for counting only.
"""

from __future__ import annotations

from dataclasses import asdict

import pytest
import safetensors.torch
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from emodistill.core.errors import InputError
from emodistill.models import (
    PRESETS,
    ModelConfig,
    build_model,
    count_macs,
    count_parameters,
    load_backbone_weights,
    presets_table,
)
from emodistill.models.mobilefacenet import PReLU, final_map_size, scale_channels
from emodistill.tasks import PAPER_TASKS

B, L = 2, 4


def inputs(config: ModelConfig, batch: int = B, length: int = L, seed: int = 0):
    """Random frames in [0, 1] and, for audio models, a random log-mel."""
    gen = torch.Generator().manual_seed(seed)
    size = config.input_size
    frames = torch.rand(batch, length, 3, size, size, generator=gen)
    shape = (batch, length, config.n_mels, config.audio_frames)
    audio = torch.randn(*shape, generator=gen) if config.audio else None
    return frames, audio


@pytest.fixture(scope="module", params=["v", "va"])
def tiny(request):
    torch.manual_seed(0)
    return build_model("tiny", modality=request.param).eval()


def test_logits_have_one_entry_per_task_with_its_width(tiny):
    frames, audio = inputs(tiny.config)
    logits = tiny(frames, audio)
    assert list(logits) == [t.name for t in PAPER_TASKS]
    for t in PAPER_TASKS:
        assert logits[t.name].shape == (B, L, t.n_logits)


def test_backward_reaches_every_parameter():
    model = build_model("tiny", "va").train()
    frames, audio = inputs(model.config)
    sum(out.square().mean() for out in model(frames, audio).values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert no_grad == []


def test_model_normalises_frames_to_minus_one_one(tiny):
    seen = []
    hook = tiny.backbone.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    frames, audio = inputs(tiny.config)
    try:
        tiny(frames, audio)
    finally:
        hook.remove()
    expected = (frames.flatten(0, 1) - 0.5) / 0.5
    torch.testing.assert_close(seen[0], expected)


def test_paper_presets_match_published_sizes():
    # Paper Sec. 5.1: EMENet-V 1.68M params, 228M FLOPs; EMENet-VA 1.91M, 234M per frame.
    for preset, params, macs in (("emenet-v", 1.68e6, 228e6), ("emenet-va", 1.91e6, 234e6)):
        model = build_model(preset)
        assert count_parameters(model) == pytest.approx(params, rel=0.02)
        assert count_macs(model) == pytest.approx(macs, rel=0.05)
    model = build_model("emenet-va")
    # The landmark network's backbone to the GDC 0.94M params; MarbleNet 3x2x64 about 88K.
    assert count_parameters(model.backbone) == pytest.approx(0.94e6, rel=0.01)
    assert count_parameters(model.audio_encoder) == pytest.approx(88e3, rel=0.02)


@pytest.mark.parametrize("preset", ["tiny", "emenet-va"])
def test_macs_agree_with_pytorch_flop_counter(preset):
    model = build_model(preset).eval()
    frames, audio = inputs(model.config, batch=1, length=1)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(frames, audio)
    assert count_macs(model) == counter.get_total_flops() // 2  # one multiply-add = 2 FLOPs


def test_count_macs_accepts_a_config_and_counts_gru_by_hand():
    config = PRESETS["tiny"]
    model = build_model(config)
    assert count_macs(config) == count_macs(model)
    head = model.heads["AU"]
    D, H = config.feature_dim, config.gru_hidden
    # GRU: 3 gates, each W_i (H x D) and W_h (H x H) plus two bias vectors; then H -> 12.
    assert count_parameters(head) == 3 * (D * H + H * H + 2 * H) + H * 12 + 12


def test_channel_rounding_and_map_size():
    assert [scale_channels(64, w) for w in (1.0, 0.5, 0.25)] == [64, 32, 16]
    assert scale_channels(128, 0.25) == 32
    assert scale_channels(12, 1.0) == 16  # rounds to a multiple of 8
    assert [final_map_size(s) for s in (112, 64, 48, 32)] == [7, 4, 3, 2]


def test_forward_equals_stateful_from_zero_state(tiny):
    frames, audio = inputs(tiny.config)
    plain = tiny(frames, audio)
    stateful, hidden = tiny.forward_stateful(frames, audio, None)
    zeros = torch.zeros(len(PAPER_TASKS), B, tiny.config.gru_hidden)
    explicit, _ = tiny.forward_stateful(frames, audio, zeros)
    assert hidden.shape == (len(PAPER_TASKS), B, tiny.config.gru_hidden)
    for t in PAPER_TASKS:
        torch.testing.assert_close(plain[t.name], stateful[t.name])
        torch.testing.assert_close(plain[t.name], explicit[t.name])


def test_chunks_with_carried_state_equal_one_pass(tiny):
    frames, audio = inputs(tiny.config, length=6)
    full, full_hidden = tiny.forward_stateful(frames, audio)
    halves = [slice(0, 3), slice(3, 6)]
    hidden, chunks = None, []
    for half in halves:
        chunk_audio = audio[:, half] if audio is not None else None
        logits, hidden = tiny.forward_stateful(frames[:, half], chunk_audio, hidden)
        chunks.append(logits)
    for t in PAPER_TASKS:
        joined = torch.cat([c[t.name] for c in chunks], dim=1)
        torch.testing.assert_close(joined, full[t.name])
    torch.testing.assert_close(hidden, full_hidden)


def test_channels_last_gives_the_same_output(tiny):
    frames, audio = inputs(tiny.config)
    expected = tiny(frames, audio)
    converted = build_model(tiny.config).eval()
    converted.load_state_dict(tiny.state_dict())
    converted = converted.to(memory_format=torch.channels_last)
    got = converted(frames, audio)
    for t in PAPER_TASKS:
        torch.testing.assert_close(got[t.name], expected[t.name], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels", [16, 1])
@pytest.mark.parametrize("channels_last", [True, False])
def test_fast_prelu_gives_torchs_gradients(channels, channels_last):
    """The backbone's PReLU has its own backward pass: the input's gradient must be torch's bit
    for bit (zeros and ties included) and the slopes' the same up to summation order."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 16, 5, 5, generator=gen)
    x[0, :, :2] = 0.0  # PReLU's kink: torch takes the slope there
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(6, 16, 5, 5, generator=gen)
    ours, torchs = PReLU(channels), nn.PReLU(channels)
    with torch.no_grad():
        ours.weight.uniform_(-0.5, 0.5, generator=gen)
        torchs.weight.copy_(ours.weight)
    outputs, inputs_ = [], []
    for layer in (ours, torchs):
        xi = x.clone().requires_grad_(True)
        out = layer(xi)
        out.backward(grad)
        outputs.append(out)
        inputs_.append(xi)
    assert torch.equal(outputs[0], outputs[1])
    assert torch.equal(inputs_[0].grad, inputs_[1].grad)
    torch.testing.assert_close(ours.weight.grad, torchs.weight.grad, rtol=1e-5, atol=1e-5)
    assert ours.weight.grad.abs().min() > 0  # every slope saw negative inputs


def test_fast_prelu_is_torchs_layer_outside_training():
    layer = PReLU(4)
    assert isinstance(layer, nn.PReLU) and list(layer.state_dict()) == ["weight"]
    x = torch.randn(2, 4, 3, 3)
    with torch.no_grad():
        out = layer(x)
    assert out.grad_fn is None
    assert torch.equal(out, nn.functional.prelu(x, layer.weight))


def test_heads_dropout_drops_a_share_p_and_rescales():
    layer = build_model("tiny").heads["AU"].dropout
    x = torch.ones(200, 4, 64)
    torch.manual_seed(0)
    out = layer.train()(x)
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - layer.p) < 0.02
    assert torch.all((out == 0) | (out == 1.0 / (1.0 - layer.p)))
    assert torch.equal(layer.eval()(x), x)
    weight = torch.ones(64, requires_grad=True)
    layer.train()(x * weight).sum().backward()  # the mask passes gradients only where it keeps
    assert weight.grad.min() > 0 and weight.grad.max() < 200 * 4 * 2


def test_each_head_has_its_dropout_module():
    model = build_model("tiny")
    for t in PAPER_TASKS:
        dropout = model.heads[t.name].dropout
        assert isinstance(dropout, nn.Dropout)
        assert dropout.p == 0.5
    frames, _ = inputs(model.config)
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.train()  # MC Dropout: only the dropout layers sample
    first, second = model(frames)["EXPR"], model(frames)["EXPR"]
    assert not torch.allclose(first, second)


def test_modality_overrides_the_preset():
    assert build_model("tiny", "va").audio_encoder is not None
    assert build_model("tiny", "va").config.head_input_dim == 64 + 32
    visual = build_model("emenet-va", "v")
    assert visual.audio_encoder is None
    assert visual.heads["AU"].gru.input_size == 512
    assert build_model("emenet-va").heads["AU"].gru.input_size == 640


def test_config_round_trips_through_a_plain_dict():
    config = PRESETS["demo"]
    assert ModelConfig(**asdict(config)) == config


def test_presets_table_lists_every_preset():
    table = presets_table()
    for name in PRESETS:
        assert name in table
    assert "1.68M" in table  # EMENet-V, paper Sec. 5.1


@pytest.mark.parametrize(
    ("preset", "modality", "match"),
    [
        ("resnet", None, "expected one of emenet-v, emenet-va, small, demo, tiny"),
        ("tiny", "audio", "unknown modality 'audio'"),
    ],
)
def test_unknown_preset_or_modality(preset, modality, match):
    with pytest.raises(InputError, match=match):
        build_model(preset, modality)


def test_bad_input_shapes_say_what_was_expected():
    visual, audio_model = build_model("tiny"), build_model("tiny", "va")
    frames, audio = inputs(audio_model.config)
    cases = [
        (visual, (frames[0],), r"\(B, L, 3, 32, 32\), got \(4, 3, 32, 32\)"),
        (visual, (frames[..., :16, :16],), r"got \(2, 4, 3, 16, 16\)"),
        (visual, ((frames * 255).to(torch.uint8),), "float frames"),
        (audio_model, (frames, None), "needs a spectrogram of shape"),
        (audio_model, (frames, audio[..., :32]), r"\(2, 4, 64, 64\).*got \(2, 4, 64, 32\)"),
        (audio_model, (frames, audio, torch.zeros(1, B, 32)), r"GRU state of shape \(3, 2, 32\)"),
    ]
    for model, args, match in cases:
        with pytest.raises(InputError, match=match):
            model.forward_stateful(*args)


# Key layout of the 68-point landmark MobileFaceNet (cunjian/pytorch_face_landmark), written
# out by hand: (module prefix, kind, in channels, out channels, kernel, groups).
def landmark_modules():
    mods = [("conv1", "prelu", 3, 64, 3, 1), ("conv2_dw", "prelu", 64, 64, 3, 64)]
    stages = [("conv_23", None, 64, 64, 128), ("conv_3", 4, 64, 64, 128),
              ("conv_34", None, 64, 128, 256), ("conv_4", 6, 128, 128, 256),
              ("conv_45", None, 128, 128, 512), ("conv_5", 2, 128, 128, 256)]  # fmt: skip
    for name, repeats, c_in, c_out, hidden in stages:
        prefixes = [name] if repeats is None else [f"{name}.model.{i}" for i in range(repeats)]
        for p in prefixes:
            mods += [(f"{p}.conv", "prelu", c_in, hidden, 1, 1),
                     (f"{p}.conv_dw", "prelu", hidden, hidden, 3, hidden),
                     (f"{p}.project", "linear", hidden, c_out, 1, 1)]  # fmt: skip
    mods += [("conv_6_sep", "prelu", 128, 512, 1, 1),
             ("output_layer.conv_6_dw", "linear", 512, 512, 7, 512)]  # fmt: skip
    return mods


def landmark_state_dict(seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for prefix, kind, c_in, c_out, k, groups in landmark_modules():
        state[f"{prefix}.conv.weight"] = torch.randn(c_out, c_in // groups, k, k, generator=gen)
        for stat in ("weight", "bias", "running_mean"):
            state[f"{prefix}.bn.{stat}"] = torch.randn(c_out, generator=gen)
        state[f"{prefix}.bn.running_var"] = torch.rand(c_out, generator=gen) + 0.5
        state[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(7)
        if kind == "prelu":
            state[f"{prefix}.prelu.weight"] = torch.rand(c_out, generator=gen)
    # The 136-d landmark regression after the GDC, which EMENet drops.
    state["output_layer.linear.weight"] = torch.randn(136, 512, generator=gen)
    for stat in ("weight", "bias", "running_mean", "running_var"):
        state[f"output_layer.bn.{stat}"] = torch.rand(136, generator=gen)
    return state


def test_loads_a_landmark_checkpoint(tmp_path):
    state = landmark_state_dict()
    path = tmp_path / "mobilefacenet_model_best.pth.tar"
    # As the landmark training script saves it: wrapped, keys prefixed by DataParallel.
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model = build_model("emenet-v")
    load_backbone_weights(model, path)
    backbone = model.backbone
    pairs = [
        (backbone.stem.conv.weight, "conv1.conv.weight"),
        (backbone.stem_dw.prelu.weight, "conv2_dw.prelu.weight"),
        (backbone.blocks[0].expand.conv.weight, "conv_23.conv.conv.weight"),
        (backbone.blocks[4].depthwise.bn.running_var, "conv_3.model.3.conv_dw.bn.running_var"),
        (backbone.blocks[5].project.conv.weight, "conv_34.project.conv.weight"),
        (backbone.blocks[11].depthwise.conv.weight, "conv_4.model.5.conv_dw.conv.weight"),
        (backbone.blocks[12].expand.prelu.weight, "conv_45.conv.prelu.weight"),
        (backbone.blocks[14].project.bn.bias, "conv_5.model.1.project.bn.bias"),
        (backbone.pointwise.conv.weight, "conv_6_sep.conv.weight"),
        (backbone.gdc.bn.running_mean, "output_layer.conv_6_dw.bn.running_mean"),
    ]
    for ours, key in pairs:
        torch.testing.assert_close(ours, state[key])


def test_safetensors_round_trip(tmp_path):
    torch.manual_seed(1)
    source, target = build_model("tiny"), build_model("tiny", "va")
    path = tmp_path / "backbone.safetensors"
    safetensors.torch.save_file(source.backbone.state_dict(), path)
    load_backbone_weights(target, path)
    for key, value in source.backbone.state_dict().items():
        torch.testing.assert_close(target.backbone.state_dict()[key], value)


def test_mismatched_checkpoints_name_file_and_keys(tmp_path):
    path = tmp_path / "landmark.pth"
    torch.save(landmark_state_dict(), path)
    with pytest.raises(InputError, match=r"landmark\.pth.*shaped unlike.*stem\.conv\.weight \(64, 3, 3, 3\)"):
        load_backbone_weights(build_model("tiny"), path)  # width 0.25 vs the full-width file
    state = build_model("tiny").backbone.state_dict()
    del state["gdc.conv.weight"]
    state["extra.weight"] = torch.zeros(1)
    safetensors.torch.save_file(state, tmp_path / "partial.safetensors")
    with pytest.raises(InputError, match=r"partial\.safetensors.*missing 1 of.*gdc\.conv\.weight"):
        load_backbone_weights(build_model("tiny"), tmp_path / "partial.safetensors")
    state["gdc.conv.weight"] = build_model("tiny").backbone.gdc.conv.weight
    safetensors.torch.save_file(state, tmp_path / "extra.safetensors")
    with pytest.raises(InputError, match=r"extra\.safetensors.*1 keys that.*lacks, e\.g\. extra"):
        load_backbone_weights(build_model("tiny"), tmp_path / "extra.safetensors")


def test_unreadable_checkpoints(tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(InputError, match=r"corrupt\.safetensors: not a readable"):
        load_backbone_weights(build_model("tiny"), corrupt)
    not_tensors = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_tensors)
    with pytest.raises(InputError, match=r"list\.pt: expected a state_dict"):
        load_backbone_weights(build_model("tiny"), not_tensors)
    with pytest.raises(InputError, match=r"missing\.pt: backbone checkpoint not found"):
        load_backbone_weights(build_model("tiny"), tmp_path / "missing.pt")
