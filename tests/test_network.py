"""Specification of the STD/EXP two-stream network (nnunet_shape/network/std_exp.py)."""

from __future__ import annotations

import json
import pydoc
from copy import deepcopy
from typing import Any

import numpy as np
import pytest
import torch
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from torch import nn

from nnunet_shape.network import (
    STD_EXP_CLASS_NAME,
    EXPDecoder,
    STDEXPNet,
    saved_activation_bytes,
    std_exp_arch_kwargs,
    total_stride,
)
from nnunet_shape.network.std_exp import stacked_blocks_on_concat

ISO_3D = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
ANISO_3D = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
ISO_2D = [[1, 1], [2, 2], [2, 2]]


def small_kwargs(strides: list[list[int]], **overrides: Any) -> dict[str, Any]:
    """Tiny PlainConvUNet-style kwargs (ops as classes) for ``len(strides)`` stages."""
    dim = len(strides[0])
    n_stages = len(strides)
    kwargs: dict[str, Any] = dict(
        n_stages=n_stages,
        features_per_stage=[4 * 2**i for i in range(n_stages)],
        conv_op=nn.Conv3d if dim == 3 else nn.Conv2d,
        kernel_sizes=[[3] * dim] * n_stages,
        strides=strides,
        n_conv_per_stage=[2] * n_stages,
        n_conv_per_stage_decoder=[2] * (n_stages - 1),
        conv_bias=True,
        norm_op=nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        dropout_op=None,
        dropout_op_kwargs=None,
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=True,
        std_features=4,
    )
    kwargs.update(overrides)
    return kwargs


def build(strides: list[list[int]], input_channels: int = 1, num_classes: int = 3, **overrides: Any) -> STDEXPNet:
    net = STDEXPNet(input_channels=input_channels, num_classes=num_classes, **small_kwargs(strides, **overrides))
    net.apply(net.initialize)
    return net


def nnunet_ds_scales(strides: list[list[int]]) -> list[list[float]]:
    """Deep-supervision scales exactly as nnUNetTrainer._get_deep_supervision_scales computes them."""
    return [list(i) for i in 1 / np.cumprod(np.vstack(strides), axis=0)][:-1]


# ---------------------------------------------------------------------------------- shapes
SHAPE_CASES = [
    pytest.param(ISO_3D, (16, 16, 16), id="3d-iso-cube"),
    pytest.param(ISO_3D, (8, 24, 40), id="3d-iso-noncubic"),
    pytest.param(ANISO_3D, (4, 16, 24), id="3d-aniso-122"),
    pytest.param([[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]], (4, 16, 32), id="3d-4stages"),
    pytest.param(ISO_2D, (16, 24), id="2d"),
    pytest.param([[1, 1], [2, 2]], (6, 10), id="2d-2stages"),
]


@pytest.mark.parametrize("strides, spatial", SHAPE_CASES)
def test_deep_supervision_outputs_match_nnunet_scales(strides: list[list[int]], spatial: tuple[int, ...],
                                                     device: torch.device) -> None:
    net = build(strides, input_channels=2, num_classes=3).to(device)
    x = torch.randn(2, 2, *spatial, device=device)
    outputs = net(x)
    scales = nnunet_ds_scales(strides)
    assert isinstance(outputs, list) and len(outputs) == len(strides) - 1 == len(scales)
    for output, scale in zip(outputs, scales):
        expected = tuple(int(round(n * s)) for n, s in zip(spatial, scale))
        assert output.shape == (2, 3, *expected)


@pytest.mark.parametrize("strides, spatial", SHAPE_CASES)
def test_deep_supervision_toggled_at_call_time(strides: list[list[int]], spatial: tuple[int, ...]) -> None:
    net = build(strides).eval()
    x = torch.randn(1, 1, *spatial)
    with torch.no_grad():
        with_ds = net(x)
        net.decoder.deep_supervision = False  # what nnUNetTrainer.set_deep_supervision_enabled does
        without_ds = net(x)
        net.decoder.deep_supervision = True
        again = net(x)
    assert isinstance(without_ds, torch.Tensor) and without_ds.shape == (1, 3, *spatial)
    torch.testing.assert_close(without_ds, with_ds[0], rtol=0, atol=0)
    assert isinstance(again, list) and len(again) == len(with_ds)


def test_constructor_deep_supervision_false_returns_tensor_and_loads_ds_weights() -> None:
    with_ds = build(ISO_3D)
    without_ds = build(ISO_3D, deep_supervision=False)
    without_ds.load_state_dict(with_ds.state_dict(), strict=True)  # heads always exist
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(without_ds(x), with_ds(x)[0])


# ---------------------------------------------------------------------------------- plans
@pytest.mark.parametrize("dim", [2, 3])
def test_builds_through_nnunet_get_network_from_plans(dim: int) -> None:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    strides = ISO_3D if dim == 3 else ISO_2D
    plain = dict(
        n_stages=3,
        features_per_stage=[4, 8, 16],
        conv_op=f"torch.nn.modules.conv.Conv{dim}d",
        kernel_sizes=[[3] * dim] * 3,
        strides=strides,
        n_conv_per_stage=[2, 2, 2],
        n_conv_per_stage_decoder=[2, 2],
        conv_bias=True,
        norm_op=f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
        norm_op_kwargs={"eps": 1e-05, "affine": True},
        dropout_op=None,
        dropout_op_kwargs=None,
        nonlin="torch.nn.LeakyReLU",
        nonlin_kwargs={"inplace": True},
    )
    arch_kwargs = json.loads(json.dumps(std_exp_arch_kwargs(plain, std_features=6, n_fusion_convs=1)))
    net = get_network_from_plans(
        STD_EXP_CLASS_NAME,
        arch_kwargs,
        ["conv_op", "norm_op", "dropout_op", "nonlin"],
        input_channels=1,
        output_channels=2,
        allow_init=True,
        deep_supervision=True,
    )
    assert isinstance(net, STDEXPNet)
    assert net.std_stream.output_channels == 6 and len(net.fusion.convs) == 1
    assert isinstance(net.fusion.convs[0].norm, getattr(nn, f"InstanceNorm{dim}d"))
    spatial = (8,) * dim
    outputs = net(torch.randn(1, 1, *spatial))
    assert [tuple(o.shape[2:]) for o in outputs] == [spatial, (4,) * dim]


def test_class_name_resolves_with_pydoc() -> None:
    assert pydoc.locate(STD_EXP_CLASS_NAME) is STDEXPNet


def test_std_exp_arch_kwargs_adds_extras_without_mutating_input() -> None:
    plain = {"n_stages": 2, "n_conv_per_stage": [2, 2], "strides": [[1, 1], [2, 2]], "conv_op": "torch.nn.Conv2d"}
    snapshot = deepcopy(plain)
    result = std_exp_arch_kwargs(plain, std_features=8, n_fusion_convs=1, checkpoint_full_resolution=True)
    assert plain == snapshot
    assert result == {**snapshot, "std_features": 8, "n_fusion_convs": 1, "checkpoint_full_resolution": True}
    result["strides"][0][0] = 99
    assert plain["strides"][0][0] == 1  # deep copy: plans and result do not share lists
    json.dumps(result)


def test_std_exp_arch_kwargs_rejects_residual_encoder_kwargs() -> None:
    with pytest.raises(ValueError, match="PlainConvUNet"):
        std_exp_arch_kwargs({"n_stages": 2, "n_blocks_per_stage": [1, 1]})


# ---------------------------------------------------------------------------------- topology
@pytest.mark.parametrize(
    "strides, dim, expected",
    [
        ([[1, 1, 1], [2, 2, 2], [2, 2, 2]], 3, (4, 4, 4)),
        ([[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]], 3, (2, 8, 8)),
        ([1, 2, 2], 2, (4, 4)),
        ([[1, 1], [2, 1], [2, 2]], 2, (4, 2)),
    ],
)
def test_total_stride(strides: list, dim: int, expected: tuple[int, ...]) -> None:
    assert total_stride(strides, dim) == expected


def test_exp_stream_follows_the_plans() -> None:
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]]
    kernels = [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
    net = build(strides, kernel_sizes=kernels, n_conv_per_stage=[2, 3, 2, 1])
    assert isinstance(net.encoder, PlainConvEncoder) and isinstance(net.decoder, EXPDecoder)
    assert net.encoder.output_channels == [4, 8, 16]  # features_per_stage[:n_stages - 1]
    assert net.encoder.strides == [[1, 1, 1], [2, 2, 2], [1, 2, 2]]
    assert net.encoder.kernel_sizes == kernels[1:]
    assert [len(stage[-1].convs) for stage in net.encoder.stages] == [3, 2, 1]
    assert tuple(net.exp_downsample.kernel_size) == (1, 2, 2)
    assert tuple(net.exp_upsample.stride) == (1, 2, 2) and net.exp_upsample.in_channels == 4
    assert [list(c.conv.kernel_size) for c in net.std_stream.convs] == [[1, 3, 3]] * 2
    assert net.fusion.convs[0].conv.in_channels == 8 and net.seg_head.out_channels == 3


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "strides, spatial, divisor",
    [
        (ISO_3D, (8, 8, 6), "(4, 4, 4)"),
        (ANISO_3D, (3, 8, 8), "(2, 4, 4)"),
        (ISO_2D, (16, 10), "(4, 4)"),
    ],
)
def test_non_divisible_input_is_rejected(strides: list[list[int]], spatial: tuple[int, ...], divisor: str) -> None:
    net = build(strides)
    with pytest.raises(ValueError, match=r"STDEXPNet: input spatial shape") as info:
        net(torch.randn(1, 1, *spatial))
    assert str(tuple(spatial)) in str(info.value) and divisor in str(info.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"n_stages": 1, "features_per_stage": [4], "kernel_sizes": [[3, 3, 3]], "n_conv_per_stage": [2],
          "n_conv_per_stage_decoder": []}, "at least 2 stages"),
        ({"features_per_stage": [4, 8]}, "features_per_stage has 2 entries"),
        ({"std_features": 0}, "must both be >= 1"),
        ({"n_fusion_convs": 0}, "must both be >= 1"),
    ],
)
def test_invalid_configuration_is_rejected(overrides: dict[str, Any], message: str) -> None:
    strides = [[1, 1, 1]] if overrides.get("n_stages") == 1 else ISO_3D
    with pytest.raises(ValueError, match=message):
        STDEXPNet(input_channels=1, num_classes=2, **small_kwargs(strides, **overrides))


def test_wrong_number_of_axes_is_rejected() -> None:
    with pytest.raises(ValueError, match="spatial axes"):
        build(ISO_3D)(torch.randn(1, 1, 8, 8))


# ---------------------------------------------------------------------------------- gradients
def test_gradient_reaches_both_streams(device: torch.device) -> None:
    torch.manual_seed(0)
    net = build(ISO_3D, deep_supervision=False).to(device)
    net(torch.randn(1, 1, 8, 12, 16, device=device)).square().mean().backward()
    watched = {
        "std first conv": net.std_stream.convs[0].conv.weight,
        "std second conv": net.std_stream.convs[1].conv.weight,
        "exp first conv": net.encoder.stages[0][0].convs[0].conv.weight,
        "exp bottleneck conv": net.encoder.stages[-1][0].convs[-1].conv.weight,
        "exp decoder conv": net.decoder.stages[-1].convs[0].conv.weight,
        "upsampling": net.exp_upsample.weight,
        "fusion conv": net.fusion.convs[0].conv.weight,
    }
    for name, weight in watched.items():
        assert weight.grad is not None and weight.grad.abs().sum() > 0, name


def _outputs_and_grads(net: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    net.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    outputs = net(x)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    weights = [torch.linspace(-1, 1, o.numel(), dtype=o.dtype, device=o.device).reshape(o.shape) for o in outputs]
    sum((o * w).sum() for o, w in zip(outputs, weights)).backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    grads["input"] = x.grad.clone()
    return [o.detach() for o in outputs], grads


@pytest.mark.parametrize(
    "strides, spatial, overrides",
    [
        (ISO_3D, (8, 8, 12), {}),
        (ISO_2D, (8, 12), {}),
        # dropout inside the recomputed path: checkpoint must replay the same masks
        (ISO_3D, (8, 8, 8), {"dropout_op": nn.Dropout3d, "dropout_op_kwargs": {"p": 0.3}}),
    ],
    ids=["3d", "2d", "3d-dropout"],
)
def test_checkpointing_gives_identical_outputs_and_gradients(
    strides: list[list[int]], spatial: tuple, overrides: dict, device: torch.device
) -> None:
    torch.manual_seed(0)
    plain = build(strides, **overrides).double().to(device)
    checkpointed = build(strides, checkpoint_full_resolution=True, **overrides).double().to(device)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, *spatial, dtype=torch.float64, device=device)
    torch.manual_seed(1)
    out_plain, grads_plain = _outputs_and_grads(plain, x)
    torch.manual_seed(1)
    out_ckpt, grads_ckpt = _outputs_and_grads(checkpointed, x)
    for a, b in zip(out_plain, out_ckpt):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert grads_plain.keys() == grads_ckpt.keys()
    for name in grads_plain:
        torch.testing.assert_close(grads_plain[name], grads_ckpt[name], rtol=1e-10, atol=1e-12, msg=name)


def test_checkpointing_keeps_less_for_backward_and_inference_is_unchanged() -> None:
    plain = build(ISO_3D)
    checkpointed = build(ISO_3D, checkpoint_full_resolution=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(1, 1, 16, 16, 16)
    assert saved_activation_bytes(checkpointed, x) < 0.6 * saved_activation_bytes(plain, x)
    with torch.no_grad():  # no checkpointing without gradients: the plain path
        for a, b in zip(checkpointed(x), plain(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_exp_decoder_equals_unet_decoder() -> None:
    """The concatenation recompute changes memory, not values or gradients."""
    torch.manual_seed(0)
    encoder = PlainConvEncoder(1, 3, [4, 8, 16], nn.Conv3d, 3, [1, 2, 2], 2, True, nn.InstanceNorm3d,
                               {"affine": True}, None, None, nn.LeakyReLU, {"inplace": True}, return_skips=True)
    ours = EXPDecoder(encoder, 2, 2, deep_supervision=True).double()
    reference = UNetDecoder(deepcopy(encoder), 2, 2, deep_supervision=True).double()
    reference.load_state_dict(ours.state_dict())
    skips = [torch.randn(1, c, s, s, s, dtype=torch.float64, requires_grad=True) for c, s in [(4, 8), (8, 4), (16, 2)]]
    features, heads = ours(skips)
    expected = reference(skips)
    assert len(heads) == len(expected) == 2 and features.shape == (1, 4, 8, 8, 8)
    for a, b in zip(heads, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.seg_layers[-1](features), expected[0], rtol=1e-12, atol=1e-12)
    grads_ours = torch.autograd.grad(sum(h.sum() * (i + 1) for i, h in enumerate(heads)), skips)
    grads_ref = torch.autograd.grad(sum(h.sum() * (i + 1) for i, h in enumerate(expected)), skips)
    for a, b in zip(grads_ours, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_concat_recompute_passes_gradcheck() -> None:
    torch.manual_seed(0)
    net = build(ISO_3D, features_per_stage=[2, 4, 8], std_features=2, norm_op=None, nonlin=nn.Tanh,
                nonlin_kwargs=None).double()
    upsample, blocks = net.exp_upsample, net.fusion
    low = torch.randn(1, 2, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    skip = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64, requires_grad=True)

    def recomputed(low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return stacked_blocks_on_concat(blocks, upsample, low, skip, skip_first=True)

    torch.testing.assert_close(recomputed(low, skip), blocks(torch.cat((skip, upsample(low)), 1)))
    assert torch.autograd.gradcheck(recomputed, (low, skip))


# ---------------------------------------------------------------------------------- init
def test_initialize_is_he_with_zero_bias() -> None:
    torch.manual_seed(0)
    net = build(ISO_3D, features_per_stage=[16, 32, 64])
    weight = net.encoder.stages[1][0].convs[1].conv.weight  # 32 x 32 x 27, fan_in 864
    expected_std = (2.0 / (1 + 1e-2**2) / weight[0].numel()) ** 0.5
    assert weight.std().item() == pytest.approx(expected_std, rel=0.05)
    for module in net.modules():
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)) and module.bias is not None:
            assert torch.count_nonzero(module.bias) == 0


# ---------------------------------------------------------------------------------- memory
def tiny_two_stage_net(**overrides: Any) -> STDEXPNet:
    """2 stages, features (4, 8), std 2 channels, 1 fusion conv, 3 classes: countable by hand."""
    kwargs = small_kwargs([[1, 1, 1], [2, 2, 2]], std_features=2, n_fusion_convs=1, features_per_stage=[4, 8])
    kwargs.update(overrides)
    return STDEXPNet(input_channels=1, num_classes=3, **kwargs)


def test_compute_conv_feature_map_size_by_hand() -> None:
    # input 4^3 = 64 voxels, EXP at 2^3 = 8 voxels.
    # EXP encoder: 2 convs x 4 ch x 8 = 64; no decoder stage.
    # full res: STD 2 x 2 x 64 = 256, transposed conv 2 x 64 = 128, fusion 1 x 2 x 64 = 128, head 3 x 64 = 192
    assert tiny_two_stage_net().compute_conv_feature_map_size((4, 4, 4)) == 64 + 256 + 128 + 128 + 192


@pytest.mark.parametrize(
    "checkpoint_full_resolution, expected",
    [
        # input 64 + STD 2 x 256 + fusion 2 x 128 + pooled input 8 + EXP encoder 2 x 64
        (False, 64 + 512 + 256 + 8 + 128),
        # input 64 + pooled input 8 + EXP encoder 2 x 64
        (True, 64 + 8 + 128),
    ],
)
def test_estimate_activation_bytes_by_hand(checkpoint_full_resolution: bool, expected: int) -> None:
    net = tiny_two_stage_net(checkpoint_full_resolution=checkpoint_full_resolution)
    assert net.estimate_activation_bytes((4, 4, 4), batch_size=1, bytes_per_element=1) == expected
    assert net.estimate_activation_bytes((4, 4, 4), batch_size=3, bytes_per_element=2) == 6 * expected


@pytest.mark.parametrize("strides, size", [(ISO_3D, (8, 12, 16)), (ANISO_3D, (4, 8, 12)), (ISO_2D, (8, 12))])
def test_memory_model_is_positive_and_linear_in_volume(strides: list[list[int]], size: tuple[int, ...]) -> None:
    net = build(strides)
    double = (size[0] * 2, *size[1:])
    triple = (*size[:-1], size[-1] * 3)
    for measure in (net.compute_conv_feature_map_size, net.estimate_activation_bytes):
        base = measure(size)
        assert base > 0
        assert measure(double) == 2 * base
        assert measure(triple) == 3 * base


@pytest.mark.parametrize(
    "strides, size, overrides",
    [
        (ISO_3D, (16, 16, 16), {}),
        (ANISO_3D, (8, 16, 24), {}),
        (ISO_3D, (16, 16, 16), {"checkpoint_full_resolution": True}),
        (ISO_2D, (32, 32), {"n_fusion_convs": 1}),
    ],
)
def test_estimate_matches_saved_tensor_measurement(strides: list, size: tuple, overrides: dict) -> None:
    net = build(strides, **overrides)
    measured = saved_activation_bytes(net, torch.randn(1, 1, *size))
    estimated = net.estimate_activation_bytes(size, batch_size=1, bytes_per_element=4)
    assert 0.8 < estimated / measured < 1.25


def test_saved_activation_bytes_counts_shared_storages_once() -> None:
    class TwoUses(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x * 2  # new storage, saved by both products below
            return y * y + y.sin()

    x = torch.randn(1000, requires_grad=True)
    assert saved_activation_bytes(TwoUses(), x) == 4000
