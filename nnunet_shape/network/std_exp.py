"""STD/EXP two-stream network: a memory-efficient U-Net for whole-scan patches.

In a plain U-Net most activation memory sits at full resolution, where the first encoder
stage and the last decoder stage each keep several 32-channel maps for backward. The
two-stream design (paper 000, after Wang et al. 2022) keeps full resolution narrow:

* **STD stream** (full resolution, narrow and shallow): ``2 x [conv -> norm -> nonlin]`` with
  ``std_features`` (16) channels on the input image.
* **EXP stream** (expressive, downsampled): the input is average-pooled once by ``strides[1]``
  and fed to a PlainConvUNet-like encoder/decoder; its decoder ends in a
  ``features_per_stage[0]`` (32) channel feature map at that reduced resolution, with 1x1
  heads for deep supervision at each of its resolutions.
* **Fusion** (full resolution): a transposed conv ``features_per_stage[0] -> std_features``
  with kernel = stride = ``strides[1]`` inverts the EXP downsampling, the result is
  concatenated with the STD features (``2 * std_features`` channels), followed by
  ``n_fusion_convs x [conv -> norm -> nonlin]`` with ``std_features`` channels and a 1x1 conv
  to ``num_classes`` logits.

How the nnU-Net plans (PlainConvUNet ``arch_kwargs``) are interpreted
---------------------------------------------------------------------
Let ``n = n_stages`` and plan stage ``i`` have ``features_per_stage[i]``, ``kernel_sizes[i]``,
``strides[i]``, ``n_conv_per_stage[i]``.

* Plan stage 0 (stride 1) is the full resolution: the STD stream and the fusion blocks live
  there and use ``kernel_sizes[0]`` (e.g. ``(1, 3, 3)`` for very anisotropic scans).
* ``strides[1]`` (e.g. ``(2, 2, 2)`` or ``(1, 2, 2)``) is the EXP stream's input
  downsampling (average pooling, no parameters, cheap).
* The EXP U-Net has ``n - 1`` stages. EXP stage ``j`` runs at the resolution of plan stage
  ``j + 1``; its channel count follows the *depth* (``features_per_stage[j]``, so 32 ... 320
  with the last plan width dropped), while kernel sizes and conv counts follow the
  *resolution* (``kernel_sizes[j + 1]``, ``n_conv_per_stage[j + 1]``), because the planner
  chose those for the voxel spacing at that resolution. EXP strides are
  ``[1, strides[2], ..., strides[n - 1]]``. The EXP decoder has ``n - 2`` stages and uses
  ``n_conv_per_stage_decoder[:n - 2]`` (PlainConvUNet indexes its decoder from the
  bottleneck up; the entry it would use at full resolution is replaced by
  ``n_fusion_convs``).
* Deep supervision: nnU-Net derives the target scales from the plans as
  ``1 / cumprod(strides)[:-1]``, i.e. ``n - 1`` outputs at ``1, 1/s1, 1/(s1 s2), ...``. With
  deep supervision the forward returns ``[fused full-resolution logits, EXP head at 1/s1,
  EXP head at 1/(s1 s2), ...]`` (``n - 1`` tensors, highest resolution first); without it, the
  fused logits alone. nnU-Net toggles this through ``network.decoder.deep_supervision``, which
  ``forward`` reads at call time.
* Input spatial sizes must be divisible by the total stride ``prod(strides)`` per axis, as for
  every nnU-Net network (the trainer rounds the patch up).

Memory: the concatenations (EXP decoder stages and fusion) are never kept for backward; the
upsampling, concatenation and first conv are recomputed instead (one cheap transposed conv and
one conv), since both halves are kept anyway. At full resolution this saves ``2 *
std_features`` maps per voxel (64 B/voxel in bf16; 535 -> 429 B/voxel in total for the
knee plans of ``benchmarks/activation_memory.py``).

``checkpoint_full_resolution=True`` recomputes the whole full-resolution path (STD stream,
transposed conv, concatenation, fusion blocks, 1x1 head) during backward
(``torch.utils.checkpoint``, ``use_reentrant=False``) whenever gradients are enabled; only the
input image and the EXP decoder output are then kept for it. Outputs and gradients are the
same as without checkpointing.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.helper import (
    convert_conv_op_to_dim,
    get_matching_convtransp,
    get_matching_pool_op,
    maybe_convert_scalar_to_list,
)
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd
from torch.utils.checkpoint import checkpoint

__all__ = [
    "STD_EXP_CLASS_NAME",
    "EXPDecoder",
    "STDEXPNet",
    "std_exp_arch_kwargs",
    "stacked_blocks_on_concat",
    "total_stride",
]

#: Dotted class name for ``plans["configurations"][...]["architecture"]["network_class_name"]``.
STD_EXP_CLASS_NAME = "nnunet_shape.network.std_exp.STDEXPNet"


IntOrSeq = int | Sequence[int]


def _per_stage(value: Any, n_stages: int, name: str) -> list:
    """Expand a scalar plan entry to one entry per stage and check the length of a list."""
    if isinstance(value, (list, tuple)):
        if len(value) != n_stages:
            raise ValueError(
                f"STDEXPNet: {name} has {len(value)} entries but {n_stages} are "
                f"required; got {name}={list(value)}"
            )
        return list(value)
    return [value] * n_stages


def total_stride(strides: Sequence[IntOrSeq], dim: int) -> tuple[int, ...]:
    """Product of the per-stage strides per axis: the divisor every input axis must satisfy.

    Args:
        strides: one stride per stage, each an int or a sequence of ``dim`` ints.
        dim: number of spatial axes (2 or 3).

    Returns:
        ``dim`` ints, e.g. ``(8, 32, 32)`` for ``[1, (1, 2, 2), 2, 2, 2, (1, 2, 2)]``.
    """
    result = np.ones(dim, dtype=np.int64)
    for stride in strides:
        result *= np.broadcast_to(np.asarray(stride, dtype=np.int64), (dim,))
    return tuple(int(v) for v in result)


def _upsample_concat_conv(
    conv: nn.Module, upsample: nn.Module, low: torch.Tensor, skip: torch.Tensor, skip_first: bool
) -> torch.Tensor:
    """``conv(cat(upsample(low), skip))`` (or ``cat(skip, upsample(low))`` if ``skip_first``)."""
    upsampled = upsample(low)
    return conv(torch.cat((skip, upsampled) if skip_first else (upsampled, skip), 1))


def stacked_blocks_on_concat(
    blocks: StackedConvBlocks,
    upsample: nn.Module,
    low: torch.Tensor,
    skip: torch.Tensor,
    *,
    skip_first: bool = False,
) -> torch.Tensor:
    """``blocks(cat(upsample(low), skip))`` without keeping the concatenation for backward.

    The concatenated map (``C_up + C_skip`` channels at the higher resolution) would be kept
    by the first conv for its weight gradient although both halves are cheap to rebuild:
    ``skip`` and ``low`` are kept anyway by their own producers. So the upsampling, the
    concatenation and the first conv run under ``torch.utils.checkpoint`` (recomputed during
    backward: one transposed conv with kernel = stride plus one conv), and the rest of the
    first block (dropout, norm, nonlinearity) and the following blocks run normally. Same
    values and gradients as the plain composition; without gradients it is the plain
    composition. ``blocks`` must be dynamic-network-architectures' ``StackedConvBlocks`` whose
    blocks start with their conv (``all_modules[0]``), as ``ConvDropoutNormReLU`` does.

    Shapes: ``low`` (B, C_low, *S_low), ``skip`` (B, C_skip, *S), result (B, C_out, *S).
    """
    first_block = blocks.convs[0]
    if torch.is_grad_enabled():
        features = checkpoint(
            _upsample_concat_conv, first_block.conv, upsample, low, skip, skip_first, use_reentrant=False
        )
    else:
        features = _upsample_concat_conv(first_block.conv, upsample, low, skip, skip_first)
    features = first_block.all_modules[1:](features)
    for block in blocks.convs[1:]:
        features = block(features)
    return features


class EXPDecoder(UNetDecoder):
    """UNetDecoder that returns its last feature map besides the deep-supervision heads.

    Same modules (and state-dict keys) as dynamic-network-architectures' ``UNetDecoder``;
    ``forward(skips)`` returns ``(features, heads)`` where ``features`` is the highest-resolution
    decoder output ``(B, features_per_stage[0], *S_exp)`` and ``heads`` the 1x1 segmentation
    outputs of every decoder stage, highest resolution first, when ``self.deep_supervision``
    is true (else an empty list). With a single-stage encoder there is no decoder stage and
    ``features`` is the encoder output. The concatenations are rebuilt during backward
    instead of being kept (see :func:`stacked_blocks_on_concat`); values are those of
    ``UNetDecoder``.
    """

    def forward(self, skips: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:  # type: ignore[override]
        features = skips[-1]
        heads: list[torch.Tensor] = []
        for s in range(len(self.stages)):
            features = stacked_blocks_on_concat(self.stages[s], self.transpconvs[s], features, skips[-(s + 2)])
            if self.deep_supervision:
                heads.append(self.seg_layers[s](features))
        return features, heads[::-1]

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Feature-map elements written by this decoder's convs for an encoder input of ``input_size``.

        Counts conv blocks, transposed-conv outputs and, with deep supervision only, the 1x1
        heads (unlike ``UNetDecoder``, no head is evaluated without deep supervision).
        """
        skip_sizes = []
        size = list(input_size)
        for s in range(len(self.encoder.strides) - 1):
            size = [i // j for i, j in zip(size, self.encoder.strides[s])]
            skip_sizes.append(size)
        output = 0
        for s in range(len(self.stages)):
            size = skip_sizes[-(s + 1)]
            voxels = int(np.prod(size, dtype=np.int64))
            output += int(self.stages[s].compute_conv_feature_map_size(size))
            output += self.encoder.output_channels[-(s + 2)] * voxels
            if self.deep_supervision:
                output += self.num_classes * voxels
        return output


class STDEXPNet(nn.Module):
    """Two-stream (full-resolution STD + downsampled EXP) segmentation network for 2-D / 3-D.

    Built from the same keyword arguments as dynamic-network-architectures' ``PlainConvUNet``
    (so nnU-Net's ``get_network_from_plans`` can build it from a plans file) plus three
    extras. See the module docstring for how the plans are interpreted.

    Input ``(B, input_channels, *S)``, ``S`` divisible by :func:`total_stride` of ``strides``.
    Output ``(B, num_classes, *S)`` logits, or with deep supervision a list of ``n_stages - 1``
    logits tensors at the scales ``1 / cumprod(strides)[:-1]``, highest resolution first.

    Args:
        std_features: channels of the full-resolution STD stream and fusion blocks.
        n_fusion_convs: number of ``conv -> norm -> nonlin`` blocks after the concatenation.
        checkpoint_full_resolution: recompute the full-resolution path during backward.
    """

    def __init__(
        self,
        input_channels: int,
        n_stages: int,
        features_per_stage: IntOrSeq,
        conv_op: type[_ConvNd],
        kernel_sizes: IntOrSeq | Sequence[IntOrSeq],
        strides: IntOrSeq | Sequence[IntOrSeq],
        n_conv_per_stage: IntOrSeq,
        num_classes: int,
        n_conv_per_stage_decoder: IntOrSeq,
        conv_bias: bool = False,
        norm_op: None | type[nn.Module] = None,
        norm_op_kwargs: dict | None = None,
        dropout_op: None | type[_DropoutNd] = None,
        dropout_op_kwargs: dict | None = None,
        nonlin: None | type[nn.Module] = None,
        nonlin_kwargs: dict | None = None,
        deep_supervision: bool = False,
        nonlin_first: bool = False,
        *,
        std_features: int = 16,
        n_fusion_convs: int = 2,
        checkpoint_full_resolution: bool = False,
    ) -> None:
        super().__init__()
        if n_stages < 2:
            raise ValueError(
                f"STDEXPNet: n_stages={n_stages}, but at least 2 stages are needed "
                "(stage 0 = full-resolution STD stream, strides[1] = EXP downsampling)"
            )
        if std_features < 1 or n_fusion_convs < 1:
            raise ValueError(
                f"STDEXPNet: std_features={std_features} and "
                f"n_fusion_convs={n_fusion_convs} must both be >= 1"
            )
        dim = convert_conv_op_to_dim(conv_op)
        features = _per_stage(features_per_stage, n_stages, "features_per_stage")
        kernels = [maybe_convert_scalar_to_list(conv_op, k) for k in _per_stage(kernel_sizes, n_stages, "kernel_sizes")]
        stride_list = [
            [int(v) for v in maybe_convert_scalar_to_list(conv_op, s)]
            for s in _per_stage(strides, n_stages, "strides")
        ]
        convs_per_stage = _per_stage(n_conv_per_stage, n_stages, "n_conv_per_stage")
        convs_per_decoder_stage = _per_stage(n_conv_per_stage_decoder, n_stages - 1, "n_conv_per_stage_decoder")

        self.input_channels = input_channels
        self.num_classes = num_classes
        self.conv_op = conv_op
        self.std_features = std_features
        self.n_fusion_convs = n_fusion_convs
        self.checkpoint_full_resolution = checkpoint_full_resolution
        self.strides = stride_list
        self.exp_input_stride = stride_list[1]
        self.total_stride = total_stride(stride_list, dim)

        block_kwargs = dict(
            conv_bias=conv_bias,
            norm_op=norm_op,
            norm_op_kwargs=norm_op_kwargs,
            dropout_op=dropout_op,
            dropout_op_kwargs=dropout_op_kwargs,
            nonlin=nonlin,
            nonlin_kwargs=nonlin_kwargs,
            nonlin_first=nonlin_first,
        )
        self.std_stream = StackedConvBlocks(
            2, conv_op, input_channels, std_features, kernels[0], 1, **block_kwargs
        )
        self.exp_downsample = get_matching_pool_op(conv_op, pool_type="avg")(
            kernel_size=self.exp_input_stride, stride=self.exp_input_stride
        )
        self.encoder = PlainConvEncoder(
            input_channels,
            n_stages - 1,
            features[: n_stages - 1],
            conv_op,
            kernels[1:],
            [[1] * dim] + stride_list[2:],
            convs_per_stage[1:],
            return_skips=True,
            **block_kwargs,
        )
        self.decoder = EXPDecoder(
            self.encoder,
            num_classes,
            convs_per_decoder_stage[: n_stages - 2],
            deep_supervision,
            nonlin_first=nonlin_first,
        )
        self.exp_upsample = get_matching_convtransp(conv_op=conv_op)(
            features[0], std_features, self.exp_input_stride, self.exp_input_stride, bias=conv_bias
        )
        self.fusion = StackedConvBlocks(
            n_fusion_convs, conv_op, 2 * std_features, std_features, kernels[0], 1, **block_kwargs
        )
        self.seg_head = conv_op(std_features, num_classes, 1, 1, 0, bias=True)

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: torch.Tensor) -> None:
        dim = len(self.total_stride)
        if x.ndim != dim + 2:
            raise ValueError(
                f"STDEXPNet: expected input (B, C, {dim} spatial axes), got shape {tuple(x.shape)}"
            )
        spatial = tuple(x.shape[2:])
        if any(size % divisor for size, divisor in zip(spatial, self.total_stride)):
            raise ValueError(
                f"STDEXPNet: input spatial shape {spatial} is not divisible by the "
                f"network's total stride {self.total_stride} per axis (product of the plans' "
                "strides); pad or round the patch size up to a multiple of it"
            )

    def _full_resolution_path(self, x: torch.Tensor, exp_features: torch.Tensor) -> torch.Tensor:
        """STD stream, upsampled EXP features, fusion blocks and 1x1 head: (B, K, *S) logits."""
        std = self.std_stream(x)
        fused = stacked_blocks_on_concat(self.fusion, self.exp_upsample, exp_features, std, skip_first=True)
        return self.seg_head(fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """``x``: (B, C, *S). Returns (B, K, *S) logits, or the deep-supervision list."""
        self._check_input(x)
        exp_features, exp_heads = self.decoder(self.encoder(self.exp_downsample(x)))
        if self.checkpoint_full_resolution and torch.is_grad_enabled():
            logits = checkpoint(self._full_resolution_path, x, exp_features, use_reentrant=False)
        else:
            logits = self._full_resolution_path(x, exp_features)
        if self.decoder.deep_supervision:
            return [logits, *exp_heads]
        return logits

    # ------------------------------------------------------------------ memory model
    def _exp_input_size(self, input_size: Sequence[int]) -> list[int]:
        dim = len(self.total_stride)
        if len(input_size) != dim:
            raise ValueError(
                f"STDEXPNet: give the spatial size only ({dim} axes, no batch/channel "
                f"axes), got input_size={tuple(input_size)}"
            )
        return [i // s for i, s in zip(input_size, self.exp_input_stride)]

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Feature-map elements written by the convs for one sample of spatial size ``input_size``.

        Same convention as dynamic-network-architectures (no batch axis; conv blocks,
        transposed convs and evaluated 1x1 heads, each counted once).
        """
        exp_size = self._exp_input_size(input_size)
        voxels = int(np.prod(input_size, dtype=np.int64))
        full_resolution = (
            int(self.std_stream.compute_conv_feature_map_size(input_size))
            + self.std_features * voxels  # transposed conv
            + int(self.fusion.compute_conv_feature_map_size(input_size))
            + self.num_classes * voxels  # 1x1 head
        )
        exp = int(self.encoder.compute_conv_feature_map_size(exp_size)) + self.decoder.compute_conv_feature_map_size(
            exp_size
        )
        return full_resolution + exp

    def estimate_activation_bytes(
        self, input_size: Sequence[int], batch_size: int = 1, bytes_per_element: int = 2
    ) -> int:
        """Approximate bytes of activations kept for backward by one training forward pass.

        The model (checked against ``torch.autograd.graph.saved_tensors_hooks`` in the tests):
        every ``conv -> norm -> nonlin`` block keeps two maps of its output size (the conv
        output, kept by the normalisation, and the normalised output, kept by the in-place
        nonlinearity and by the next conv); concatenations are not kept (they are rebuilt in
        backward, see :func:`stacked_blocks_on_concat`); the input image is kept by the first
        convs once at full and once at EXP resolution. With ``checkpoint_full_resolution`` the
        full-resolution path keeps only the input image. Ignored: weights (and their
        reduced-precision copies, a constant of a few tens of MB), normalisation statistics,
        dropout masks, the loss's own buffers, and the transient peak during backward. With
        ``bytes_per_element=2`` this approximates bf16/fp16 mixed precision (the input image is
        then counted at 2 bytes too); with 4 it is float32.

        Args:
            input_size: spatial size of one sample, e.g. ``(160, 384, 384)``.
            batch_size: samples per batch (memory is linear in it).
            bytes_per_element: 2 for mixed precision, 4 for float32.

        Returns:
            Estimated bytes (int).
        """
        exp_size = self._exp_input_size(input_size)
        voxels = int(np.prod(input_size, dtype=np.int64))
        elements = self.input_channels * voxels
        if not self.checkpoint_full_resolution:
            elements += 2 * int(self.std_stream.compute_conv_feature_map_size(input_size))
            elements += 2 * int(self.fusion.compute_conv_feature_map_size(input_size))

        elements += self.input_channels * int(np.prod(exp_size, dtype=np.int64))
        elements += 2 * int(self.encoder.compute_conv_feature_map_size(exp_size))
        size = list(exp_size)
        skip_sizes = []
        for stride in self.encoder.strides[:-1]:
            size = [i // j for i, j in zip(size, stride)]
            skip_sizes.append(size)
        for s, stage in enumerate(self.decoder.stages):
            elements += 2 * int(stage.compute_conv_feature_map_size(skip_sizes[-(s + 1)]))
        return int(elements) * batch_size * bytes_per_element

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """He initialisation as PlainConvUNet (nnU-Net calls ``network.apply(network.initialize)``)."""
        InitWeights_He(1e-2)(module)


def std_exp_arch_kwargs(
    plain_arch_kwargs: dict,
    *,
    std_features: int = 16,
    n_fusion_convs: int = 2,
    checkpoint_full_resolution: bool = False,
) -> dict:
    """Plans ``arch_kwargs`` for :class:`STDEXPNet` from a PlainConvUNet configuration's kwargs.

    Returns a new dict: the PlainConvUNet kwargs unchanged (ops stay dotted strings, listed in
    the plans' ``_kw_requires_import``) plus ``std_features``, ``n_fusion_convs`` and
    ``checkpoint_full_resolution``; JSON-serialisable if the input is. Kwargs PlainConvUNet does
    not know (e.g. ResidualEncoderUNet's ``n_blocks_per_stage``) are rejected.
    """
    if "n_blocks_per_stage" in plain_arch_kwargs or "n_conv_per_stage" not in plain_arch_kwargs:
        raise ValueError(
            f"std_exp_arch_kwargs: expected PlainConvUNet arch_kwargs (with "
            f"'n_conv_per_stage'), got keys {sorted(plain_arch_kwargs)}"
        )
    kwargs = copy.deepcopy(dict(plain_arch_kwargs))
    kwargs.update(
        std_features=int(std_features),
        n_fusion_convs=int(n_fusion_convs),
        checkpoint_full_resolution=bool(checkpoint_full_resolution),
    )
    return kwargs
