"""Specification of nnunet_shape.core.descriptors.

Reference values come from an independent numpy implementation with full coordinate grids
(``reference_descriptors`` below) or are computed by hand in the test tables.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nnunet_shape.core import descriptors as d

# ----------------------------------------------------------------------------------------
# independent numpy reference
# ----------------------------------------------------------------------------------------


def reference_descriptors(p: np.ndarray, spacing) -> dict[str, np.ndarray]:
    """Descriptors of ONE class map ``p`` (*S) with full coordinate grids, float64."""
    p = np.asarray(p, dtype=np.float64)
    s = np.asarray(spacing, dtype=np.float64)
    grids = np.meshgrid(*[np.arange(n) * si for n, si in zip(p.shape, s)], indexing="ij")
    x = np.stack([g.ravel() for g in grids], axis=1)  # (N, D)
    w = p.ravel()
    mass = w.sum()
    vol = mass * np.prod(s)
    if mass > 0:
        c = (w[:, None] * x).sum(0) / mass
        dx = x - c
        cov = (dx * w[:, None]).T @ dx / mass
    else:
        c = np.zeros(p.ndim)
        cov = np.zeros((p.ndim, p.ndim))
    surf = 0.0
    for a in range(p.ndim):
        face = np.prod(s) / s[a]
        surf += face * np.abs(np.diff(p, axis=a)).sum()
    return {
        "volume": vol,
        "centroid": c,
        "covariance": cov,
        "spread": np.sqrt(np.clip(np.diag(cov), 0, None)),
        "surface": surf,
    }


def box(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = 1.0
    return m


def soft_blob(shape, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 1.0, size=shape)


# (name, class maps (K, *S), spacing)
CASES = [
    ("box3d_interior", [box((6, 7, 8), (1, 2, 2), (3, 5, 6))], (1.0, 2.0, 3.0)),
    ("box3d_touching_border", [box((5, 6, 4), (0, 0, 1), (2, 6, 4))], (0.7, 1.0, 2.5)),
    ("rect2d_touching_border", [box((8, 9), (0, 3), (4, 9))], (1.0, 1.0)),
    ("rect2d_anisotropic", [box((8, 9), (2, 1), (7, 4))], (0.5, 3.0)),
    ("soft3d_two_classes", [soft_blob((4, 5, 3), 0), soft_blob((4, 5, 3), 1)], (1.2, 0.8, 2.0)),
    ("soft2d", [soft_blob((7, 6), 2)], (0.3, 0.9)),
    ("single_voxel3d", [box((4, 4, 4), (2, 1, 3), (3, 2, 4))], (1.0, 1.5, 2.0)),
]


@pytest.mark.parametrize("name,maps,spacing", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_numpy_reference(name, maps, spacing, dtype, device):
    probs = torch.tensor(np.stack(maps)[None], dtype=dtype, device=device)
    got = d.compute_descriptors(probs, spacing, d.DESCRIPTOR_NAMES)
    got = {key: value.cpu() for key, value in got.items()}
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    for k, m in enumerate(maps):
        ref = reference_descriptors(m, spacing)
        for key in d.DESCRIPTOR_NAMES:
            assert got[key].dtype == dtype
            np.testing.assert_allclose(
                got[key][0, k].double().numpy(), ref[key], **tol, err_msg=f"{name} {key}"
            )


# Hand-computed values: box of 2 x 3 x 4 voxels at index (1, 2, 2) in a 6 x 7 x 8 image,
# spacing (1, 2, 3). x-coords {1, 2}, y {4, 6, 8}, z {6, 9, 12, 15}.
HAND_BOX = {
    "volume": 24 * 6.0,
    "centroid": [1.5, 6.0, 10.5],
    "spread": [0.5, math.sqrt(8.0 / 3.0), math.sqrt(11.25)],
    # faces normal to x: 2 * (3*4) * (2*3); to y: 2 * (2*4) * (1*3); to z: 2 * (2*3) * (1*2)
    "surface": 2 * 12 * 6 + 2 * 8 * 3 + 2 * 6 * 2,
}


@pytest.mark.parametrize("key", list(HAND_BOX))
def test_hand_computed_box(key):
    probs = torch.tensor(box((6, 7, 8), (1, 2, 2), (3, 5, 6))[None, None])
    got = d.compute_descriptors(probs, (1.0, 2.0, 3.0), (key,))[key][0, 0]
    np.testing.assert_allclose(got.numpy(), HAND_BOX[key], rtol=1e-12)


@pytest.mark.parametrize(
    "lo,hi,expected",
    [
        # 4 x 9 rectangle in rows 0..3 (touching the top border), columns 3..8 (right border)
        # -> only the bottom edge (6 edges) and the left edge (4 edges) count
        ((0, 3), (4, 9), 6 + 4),
        ((2, 2), (5, 6), 2 * 4 + 2 * 3),  # interior 3 x 4 -> perimeter 14
        ((0, 0), (8, 9), 0),  # the whole image has no boundary inside the image
    ],
)
def test_boundary_length_2d(lo, hi, expected):
    probs = torch.tensor(box((8, 9), lo, hi)[None, None])
    assert d.surface(probs).item() == expected


def test_per_case_spacing_equals_separate_calls():
    torch.manual_seed(0)
    probs = torch.rand(3, 2, 4, 5, 3, dtype=torch.float64)
    spacing = torch.tensor([[1.0, 2.0, 0.5], [0.3, 0.3, 4.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    batched = d.compute_descriptors(probs, spacing, d.DESCRIPTOR_NAMES)
    for b in range(3):
        single = d.compute_descriptors(probs[b : b + 1], spacing[b].tolist(), d.DESCRIPTOR_NAMES)
        for key in d.DESCRIPTOR_NAMES:
            torch.testing.assert_close(batched[key][b : b + 1], single[key])


@pytest.mark.parametrize(
    "spacing",
    [None, (1.0, 1.0, 1.0), [1.0, 1.0, 1.0], torch.ones(3), torch.ones(1, 3), torch.ones(2, 3)],
)
def test_spacing_forms_agree(spacing):
    probs = torch.rand(2, 2, 3, 4, 5, dtype=torch.float64)
    ref = d.moments(probs)
    got = d.moments(probs, spacing)
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("spacing", [(1.0, 2.0), torch.ones(3, 3), torch.ones(2, 2, 3)])
def test_bad_spacing_names_the_problem(spacing):
    with pytest.raises(ValueError, match="spacing"):
        d.moments(torch.rand(2, 2, 3, 4, 5), spacing)


def test_unknown_descriptor_name():
    with pytest.raises(ValueError, match="unknown descriptor"):
        d.compute_descriptors(torch.rand(1, 2, 3, 3), None, ("volume", "perimeter"))


# ----------------------------------------------------------------------------------------
# gradients
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", d.DESCRIPTOR_NAMES)
@pytest.mark.parametrize("shape", [(1, 2, 4, 5, 3), (2, 2, 5, 4)])
def test_gradcheck(key, shape, device):
    torch.manual_seed(1)
    # values away from 0.5-ties so |p(x+e) - p(x)| is differentiable at every pair
    probs = (0.05 + 0.9 * torch.rand(*shape, dtype=torch.float64, device=device)).requires_grad_()
    spacing = torch.linspace(0.7, 1.9, len(shape) - 2, dtype=torch.float64, device=device)
    assert torch.autograd.gradcheck(
        lambda p: d.compute_descriptors(p, spacing, (key,))[key], (probs,)
    )


def test_gradcheck_per_case_spacing():
    probs = (0.05 + 0.9 * torch.rand(2, 2, 3, 4, 3, dtype=torch.float64)).requires_grad_()
    spacing = torch.tensor([[1.0, 2.0, 0.5], [0.3, 1.0, 4.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: d.covariance(p, spacing), (probs,))
    assert torch.autograd.gradcheck(lambda p: d.surface(p, spacing), (probs,))


def test_gradcheck_principal_axes_and_ratios():
    torch.manual_seed(2)
    probs = (0.05 + 0.9 * torch.rand(1, 2, 4, 5, 3, dtype=torch.float64)).requires_grad_()

    def f(p):
        cov = d.covariance(p, (1.0, 2.0, 0.5))
        lengths, _ = d.principal_axes(cov)
        return lengths, d.elongation(cov), d.flatness(cov), d.class_ratio(d.volume(p), 1, 0)

    assert torch.autograd.gradcheck(f, (probs,))


# ----------------------------------------------------------------------------------------
# invariances
# ----------------------------------------------------------------------------------------


def test_translation_shifts_centroid_only():
    torch.manual_seed(3)
    base = torch.zeros(1, 2, 10, 9, 8, dtype=torch.float64)
    base[:, :, 1:5, 2:5, 1:4] = torch.rand(1, 2, 4, 3, 3, dtype=torch.float64)
    shift = (3, 2, 3)
    # stays strictly inside (no wrap, no contact with the border, which has no faces)
    moved = torch.roll(base, shifts=shift, dims=(2, 3, 4))
    spacing = (0.5, 1.5, 2.0)
    a = d.compute_descriptors(base, spacing, d.DESCRIPTOR_NAMES)
    b = d.compute_descriptors(moved, spacing, d.DESCRIPTOR_NAMES)
    delta = torch.tensor(shift, dtype=torch.float64) * torch.tensor(spacing, dtype=torch.float64)
    torch.testing.assert_close(b["centroid"], a["centroid"] + delta)
    for key in ("volume", "spread", "covariance", "surface"):
        torch.testing.assert_close(b[key], a[key])


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_flip_maps_centroid(axis):
    torch.manual_seed(4)
    probs = torch.rand(2, 3, 5, 4, 6, dtype=torch.float64)
    spacing = torch.tensor([0.8, 1.3, 2.1], dtype=torch.float64)
    a = d.compute_descriptors(probs, spacing, d.DESCRIPTOR_NAMES)
    b = d.compute_descriptors(probs.flip(2 + axis), spacing, d.DESCRIPTOR_NAMES)
    expected = a["centroid"].clone()
    n = probs.shape[2 + axis]
    expected[..., axis] = (n - 1) * spacing[axis] - a["centroid"][..., axis]
    torch.testing.assert_close(b["centroid"], expected)
    sign = torch.ones(3, dtype=torch.float64)
    sign[axis] = -1.0
    torch.testing.assert_close(b["covariance"], a["covariance"] * sign[:, None] * sign[None, :])
    for key in ("volume", "spread", "surface"):
        torch.testing.assert_close(b[key], a[key])


def test_spacing_scaling():
    torch.manual_seed(5)
    probs = torch.rand(1, 2, 4, 5, 6, dtype=torch.float64)
    s = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    unit = d.compute_descriptors(probs, None, d.DESCRIPTOR_NAMES)
    scaled = d.compute_descriptors(probs, s, d.DESCRIPTOR_NAMES)
    torch.testing.assert_close(scaled["volume"], unit["volume"] * s.prod())
    torch.testing.assert_close(scaled["centroid"], unit["centroid"] * s)
    torch.testing.assert_close(scaled["spread"], unit["spread"] * s)
    torch.testing.assert_close(scaled["covariance"], unit["covariance"] * s[:, None] * s[None, :])
    # surface: counts per axis times the face area prod(s) / s_a
    per_axis = torch.stack(
        [(probs.diff(dim=2 + a)).abs().sum(dim=(2, 3, 4)) for a in range(3)], dim=-1
    )
    torch.testing.assert_close(scaled["surface"], (per_axis * (s.prod() / s)).sum(-1))
    torch.testing.assert_close(unit["surface"], per_axis.sum(-1))


# ----------------------------------------------------------------------------------------
# degenerate inputs
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_empty_and_single_voxel_classes_are_finite(dtype):
    probs = torch.zeros(2, 3, 4, 5, 3, dtype=dtype)
    probs[:, 0] = 1.0
    probs[0, 0, 1, 2, 1] = 0.0
    probs[0, 2, 1, 2, 1] = 1.0  # case 0: class 2 is a single voxel; class 1 empty everywhere
    probs.requires_grad_()
    out = d.compute_descriptors(probs, (1.0, 2.0, 3.0), d.DESCRIPTOR_NAMES)
    assert out["volume"][:, 1].eq(0).all()
    assert out["centroid"][:, 1].eq(0).all()
    assert out["spread"][:, 1].eq(0).all()
    assert out["covariance"][:, 1].eq(0).all()
    assert out["surface"][:, 1].eq(0).all()
    torch.testing.assert_close(out["centroid"][0, 2], torch.tensor([1.0, 4.0, 3.0], dtype=dtype))
    assert out["spread"][0, 2].abs().max() < 1e-3
    total = sum(v.sum() for v in out.values())
    (grad,) = torch.autograd.grad(total, probs)
    assert torch.isfinite(grad).all()
    assert all(torch.isfinite(v).all() for v in out.values())


def test_all_background_batch_has_finite_gradients():
    probs = torch.zeros(2, 3, 6, 6, dtype=torch.float64)
    probs[:, 0] = 1.0
    probs.requires_grad_()
    out = d.compute_descriptors(probs, (1.0, 1.0), d.DESCRIPTOR_NAMES)
    lengths, _ = d.principal_axes(out["covariance"])
    total = sum(v.sum() for v in out.values()) + lengths.sum()
    total = total + d.elongation(out["covariance"]).sum()
    (grad,) = torch.autograd.grad(total, probs)
    assert torch.isfinite(grad).all()


def test_safe_sqrt_exact_above_eps_and_finite_gradient_at_zero():
    x = torch.tensor([0.0, 1e-30, 1e-4, 2.0, 9.0], dtype=torch.float64, requires_grad=True)
    y = d.safe_sqrt(x)
    torch.testing.assert_close(y[2:], torch.sqrt(x[2:]))
    assert y[0] == 0
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(g).all() and g[0] > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype, device):
    torch.manual_seed(6)
    ref = torch.rand(2, 3, 6, 5, 4, dtype=torch.float64, device=device)
    probs = ref.to(dtype).requires_grad_()
    out = d.compute_descriptors(probs, (1.0, 1.0, 1.0), d.DESCRIPTOR_NAMES)
    exact = d.compute_descriptors(probs.detach().double(), (1.0, 1.0, 1.0), d.DESCRIPTOR_NAMES)
    for key, value in out.items():
        assert value.dtype == dtype
        assert torch.isfinite(value).all()
        # accumulated in float32: only the final rounding to the half type is lost
        torch.testing.assert_close(value.double(), exact[key], rtol=1e-2, atol=1e-2)
    wide = d.compute_descriptors(probs, (1.0, 1.0, 1.0), ("volume",), dtype=torch.float32)
    assert wide["volume"].dtype == torch.float32
    (grad,) = torch.autograd.grad(sum(v.float().sum() for v in out.values()), probs)
    assert grad.dtype == dtype and torch.isfinite(grad).all()


def test_float64_in_float64_out_and_large_volume_in_half_with_dtype():
    assert d.volume(torch.rand(1, 1, 3, 3, dtype=torch.float64)).dtype == torch.float64
    big = torch.ones(1, 1, 64, 64, 32, dtype=torch.float16)  # 131072 voxels > float16 max
    # a float16 result that would overflow comes back in float32, not as inf
    assert d.volume(big).dtype == torch.float32 and d.volume(big).item() == 64 * 64 * 32
    assert d.moments(big, dtype=torch.float32).volume.item() == 64 * 64 * 32


# ----------------------------------------------------------------------------------------
# principal axes, elongation, flatness, ratios
# ----------------------------------------------------------------------------------------


def _rotation(angle_z: float, angle_x: float) -> torch.Tensor:
    cz, sz, cx, sx = math.cos(angle_z), math.sin(angle_z), math.cos(angle_x), math.sin(angle_x)
    rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=torch.float64)
    rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=torch.float64)
    return rz @ rx


@pytest.mark.parametrize("angles", [(0.0, 0.0), (0.3, 1.1), (2.0, -0.7)])
def test_principal_axes_of_rotated_covariance(angles):
    r = _rotation(*angles)
    cov = r @ torch.diag(torch.tensor([1.0, 9.0, 4.0], dtype=torch.float64)) @ r.T
    lengths, vectors = d.principal_axes(cov[None])
    torch.testing.assert_close(lengths[0], torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    expected = r[:, [1, 2, 0]]  # columns in descending eigenvalue order
    # eigenvectors are defined up to sign
    dots = (vectors[0] * expected).sum(0).abs()
    torch.testing.assert_close(dots, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(d.elongation(cov), torch.tensor(2.0 / 3.0, dtype=torch.float64))
    torch.testing.assert_close(d.flatness(cov), torch.tensor(1.0 / 3.0, dtype=torch.float64))


def test_elongation_2d_and_flatness_needs_3d():
    cov = torch.diag(torch.tensor([16.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(d.elongation(cov), torch.tensor(0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="flatness"):
        d.flatness(cov)


def test_elongation_of_degenerate_covariance_is_zero():
    assert d.elongation(torch.zeros(3, 3)).item() == 0.0


@pytest.mark.parametrize(
    "num,den,expected",
    [(1.0, 2.0, 0.5), (3.0, -1.5, -2.0), (0.0, 4.0, 0.0)],
)
def test_class_ratio_values(num, den, expected):
    values = torch.tensor([[5.0, num, den]], dtype=torch.float64)
    assert d.class_ratio(values, 1, 2).item() == pytest.approx(expected)


def test_class_ratio_zero_denominator_is_finite():
    values = torch.tensor([[1.0, 2.0, 0.0]], dtype=torch.float64, requires_grad=True)
    r = d.class_ratio(values, 1, 2)
    (g,) = torch.autograd.grad(r.sum(), values)
    assert torch.isfinite(r).all() and torch.isfinite(g).all()


# ----------------------------------------------------------------------------------------
# labels
# ----------------------------------------------------------------------------------------


def test_one_hot_labels_layouts_and_padding():
    labels = torch.tensor([[[0, 1, 2], [-1, 2, 1]]])  # (B=1, X=2, Y=3)
    expected = torch.tensor(
        [[[[1, 0, 0], [1, 0, 0]], [[0, 1, 0], [0, 0, 1]], [[0, 0, 1], [0, 1, 0]]]],
        dtype=torch.float32,
    )
    torch.testing.assert_close(d.one_hot_labels(labels[:, None], 3), expected)
    torch.testing.assert_close(d.one_hot_labels(labels, 3, spatial_dims=2), expected)
    torch.testing.assert_close(d.one_hot_labels(labels.float()[:, None], 3), expected)
    assert d.one_hot_labels(labels, 3, torch.float64, spatial_dims=2).dtype == torch.float64


def test_one_hot_labels_rejects_out_of_range():
    with pytest.raises(ValueError, match="num_classes=2"):
        d.one_hot_labels(torch.tensor([[[0, 2]]]), 2, spatial_dims=2)


def test_descriptors_from_labels_match_one_hot():
    labels = torch.randint(-1, 3, (2, 1, 5, 4, 3))
    spacing = (1.0, 0.5, 2.0)
    got = d.descriptors_from_labels(labels, 3, spacing, d.DESCRIPTOR_NAMES)
    one_hot = np.stack([(labels[:, 0].clamp_min(0) == k).numpy() for k in range(3)], axis=1)
    for b in range(2):
        for k in range(3):
            ref = reference_descriptors(one_hot[b, k], spacing)
            for key in d.DESCRIPTOR_NAMES:
                np.testing.assert_allclose(got[key][b, k].numpy(), ref[key], rtol=1e-5, atol=1e-4)
            assert not got["volume"].requires_grad


# ----------------------------------------------------------------------------------------
# memory: the moments pass keeps no full-size tensor for backward
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("names", [("volume", "centroid", "covariance"), d.DESCRIPTOR_NAMES])
def test_backward_keeps_no_full_size_intermediate(names):
    probs = torch.rand(1, 3, 16, 12, 10, requires_grad=True)
    saved: list[torch.Tensor] = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = d.compute_descriptors(probs, (1.0, 2.0, 3.0), names)
    sum(v.sum() for v in out.values()).backward()
    big = [t for t in saved if t.numel() > probs.numel() // 4]
    if "surface" in names:
        # the surface's backward re-reads probs itself (alive anyway), nothing else
        assert all(t.data_ptr() == probs.data_ptr() for t in big)
    else:
        # the moments' backward needs only small tensors (the (3, n) bases, the
        # first contraction's (B*K, 3, 12*10) output is 1/16 of probs)
        assert big == []
    assert torch.isfinite(probs.grad).all()


@pytest.mark.parametrize("chunk_elements", [1, 120, 1000, 10**9])
@pytest.mark.parametrize("shape", [(2, 2, 7, 5, 4), (2, 3, 9, 5)])
def test_chunking_does_not_change_results(chunk_elements, shape, device):
    torch.manual_seed(7)
    probs = torch.rand(*shape, dtype=torch.float64, device=device, requires_grad=True)
    spacing = (1.0, 2.0, 0.5)[: len(shape) - 2]
    weights = {
        n: torch.rand_like(v)
        for n, v in d.compute_descriptors(probs, None, d.DESCRIPTOR_NAMES).items()
    }

    def run(chunk):
        out = d.compute_descriptors(probs, spacing, d.DESCRIPTOR_NAMES, chunk_elements=chunk)
        (g,) = torch.autograd.grad(sum((v * weights[n]).sum() for n, v in out.items()), probs)
        return out, g

    ref_out, ref_grad = run(10**12)
    out, grad = run(chunk_elements)
    for n in d.DESCRIPTOR_NAMES:
        torch.testing.assert_close(out[n], ref_out[n])
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("chunk_elements", [1, 40])
def test_gradcheck_surface_across_chunk_cuts(chunk_elements):
    probs = (0.05 + 0.9 * torch.rand(1, 2, 6, 4, 3, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda p: d.surface(p, (1.0, 2.0, 0.5), chunk_elements=chunk_elements), (probs,)
    )
