"""Sphere templates deformed to surface points, rasterised into rough label maps (paper 003, Sec. 3.2).

Paper 003 deforms "a simple spherical template" (genus 0) to the annotator's 3-D surface points
with an Active Surface Model and rasterises the result; it gives no equations for that step.
What we do, in physical space (mm) so that an anisotropic voxel grid plays no part in the fit:

1. **Template**: a unit icosphere (VTK's icosahedron, linearly subdivided, projected onto the
   sphere): a closed genus-0 triangle mesh with nearly uniform triangles and no poles.
2. **Global placement**: centred at the points' mean; with 4 or more points whose spread spans
   3-D, stretched into the ellipsoid of their covariance (semi-axis ``sqrt(3 λ)`` along each
   principal axis: exact for points spread uniformly over a sphere), every semi-axis at least a
   quarter of the largest and at least :data:`MIN_RADIUS_VOXELS` voxels of the coarsest axis;
   with fewer points a sphere through the farthest point (at least that minimum radius).
3. **Active surface** (non-rigid ICP): repeatedly, each point is attached to its closest point on
   the current mesh (barycentric weights on a triangle, VTK's cell locator), and all vertex
   positions ``X`` solve the linear least-squares problem
   ``sum_j |sum_k w_jk X_k - p_j|^2 + alpha |L (X - X_0)|^2`` with ``L`` the mesh's (uniform)
   graph Laplacian and ``X_0`` the placed ellipsoid: points pull the surface, the bending
   energy of the *displacement* keeps it smooth and lets regions without points follow their
   neighbours (few points: the template stays close to the ellipsoid). ``alpha`` falls from
   stiff to soft over the iterations (coarse to fine), as in the usual ASM stiffness schedules.
4. **Rasterisation**: VTK's ``vtkPolyDataToImageStencil`` on the image's voxel grid (spacing
   honoured), i.e. a voxel is inside when its centre is.

Frames: the fit runs in the array frame in mm, axes (x, y, z) = array axes reversed (VTK's
order), origin at the first voxel's centre; world points are mapped there with the image's
direction and origin (:func:`nnunet_shape.point_files.format.world_to_array_mm`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from nnunet_shape.core.surface_sampling import boundary_mask

__all__ = [
    "MIN_RADIUS_VOXELS",
    "TemplateFit",
    "icosphere",
    "initial_ellipsoid",
    "fit_template",
    "rasterise_mesh",
    "is_closed_mesh",
    "combine_templates",
    "dice",
    "mean_surface_distance",
]

#: the smallest semi-axis of a template, in voxels of the coarsest axis
MIN_RADIUS_VOXELS = 1.5
#: stiffness schedule of the active surface (alpha per iteration, stiff to soft)
DEFAULT_STIFFNESS = (100.0, 30.0, 10.0, 3.0, 1.0, 1.0, 1.0, 1.0)


@dataclass
class TemplateFit:
    """A fitted template: vertices (K, 3) float64 and triangles (T, 3) int64, in the fit frame (mm, x y z)."""

    vertices: np.ndarray
    faces: np.ndarray
    num_points: int
    residual_mm: float  # mean distance of the points to the final surface


def _vtk():
    import vtk  # VTK's umbrella module; vtkmodules submodules would import less but differ across versions

    return vtk


def _polydata(vertices: np.ndarray, faces: np.ndarray):
    vtk = _vtk()
    from vtk.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray

    points = vtk.vtkPoints()
    points.SetData(numpy_to_vtk(np.ascontiguousarray(vertices, dtype=np.float64), deep=True))
    cells = np.hstack([np.full((len(faces), 1), 3, dtype=np.int64), np.asarray(faces, dtype=np.int64)]).ravel()
    polys = vtk.vtkCellArray()
    polys.SetCells(len(faces), numpy_to_vtkIdTypeArray(cells.astype(np.int64), deep=True))
    poly = vtk.vtkPolyData()
    poly.SetPoints(points)
    poly.SetPolys(polys)
    return poly


def icosphere(subdivisions: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Unit sphere mesh: (K, 3) vertices, (T, 3) triangles; K = 10 * 4^s + 2 (s=3: 642 vertices)."""
    vtk = _vtk()
    from vtk.util.numpy_support import vtk_to_numpy

    source = vtk.vtkPlatonicSolidSource()
    source.SetSolidTypeToIcosahedron()
    clean = vtk.vtkCleanPolyData()  # merge the icosahedron's duplicated corners: one closed mesh
    clean.SetInputConnection(source.GetOutputPort())
    output = clean
    if subdivisions > 0:
        subdivide = vtk.vtkLinearSubdivisionFilter()
        subdivide.SetNumberOfSubdivisions(int(subdivisions))
        subdivide.SetInputConnection(clean.GetOutputPort())
        output = subdivide
    output.Update()
    poly = output.GetOutput()
    vertices = vtk_to_numpy(poly.GetPoints().GetData()).astype(np.float64)
    vertices /= np.linalg.norm(vertices, axis=1, keepdims=True)
    faces = vtk_to_numpy(poly.GetPolys().GetConnectivityArray()).astype(np.int64).reshape(-1, 3)
    return vertices, faces


def _graph_laplacian(num_vertices: int, faces: np.ndarray):
    from scipy import sparse

    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    rows = np.concatenate([edges[:, 0], edges[:, 1]])
    cols = np.concatenate([edges[:, 1], edges[:, 0]])
    adjacency = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(num_vertices, num_vertices))
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    return sparse.identity(num_vertices, format="csr") - sparse.diags(1.0 / degree) @ adjacency


def initial_ellipsoid(points: np.ndarray, min_radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre (3,) and linear map (3, 3) placing the unit sphere on the points (step 2 of the module doc)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    centre = points.mean(axis=0)
    if len(points) >= 4:
        covariance = np.cov(points.T, bias=True)
        eigenvalues, vectors = np.linalg.eigh(covariance)
        radii = np.sqrt(3.0 * np.clip(eigenvalues, 0.0, None))
        radii = np.maximum(radii, max(0.25 * radii.max(), min_radius))
        return centre, vectors @ np.diag(radii)
    radius = float(np.max(np.linalg.norm(points - centre, axis=1))) if len(points) else 0.0
    return centre, np.eye(3) * max(radius, min_radius)


def _closest_on_mesh(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray):
    """Per point: triangle index, barycentric weights (3,), distance to the mesh."""
    vtk = _vtk()
    locator = vtk.vtkStaticCellLocator()
    locator.SetDataSet(_polydata(vertices, faces))
    locator.BuildLocator()
    closest = [0.0, 0.0, 0.0]
    cell, sub, dist2 = vtk.reference(0), vtk.reference(0), vtk.reference(0.0)
    triangles = np.empty(len(points), dtype=np.int64)
    weights = np.empty((len(points), 3))
    distances = np.empty(len(points))
    for j, p in enumerate(points):
        locator.FindClosestPoint(p.tolist(), closest, cell, sub, dist2)
        t = int(cell)
        a, b, c = vertices[faces[t]]
        q = np.asarray(closest)
        v0, v1, v2 = b - a, c - a, q - a
        d00, d01, d11 = v0 @ v0, v0 @ v1, v1 @ v1
        d20, d21 = v2 @ v0, v2 @ v1
        denominator = d00 * d11 - d01 * d01
        if denominator <= 0:
            u = v = 1.0 / 3.0
        else:
            v = (d11 * d20 - d01 * d21) / denominator
            u = (d00 * d21 - d01 * d20) / denominator
        triangles[j] = t
        weights[j] = (1.0 - v - u, v, u)
        distances[j] = float(np.sqrt(float(dist2)))
    return triangles, np.clip(weights, 0.0, 1.0), distances


def fit_template(points: np.ndarray, min_radius: float, subdivisions: int = 3,
                 stiffness: Sequence[float] = DEFAULT_STIFFNESS) -> TemplateFit:
    """Deform a sphere to (N, 3) surface points (mm, any orthonormal frame); N >= 1.

    ``min_radius`` (mm) is the smallest semi-axis of the initial placement (callers pass
    :data:`MIN_RADIUS_VOXELS` times the coarsest spacing). See the module doc for the method.
    """
    from scipy import sparse
    from scipy.sparse.linalg import splu

    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(points) == 0:
        raise ValueError("fit_template: no points; a class without points has no template")
    unit, faces = icosphere(subdivisions)
    centre, linear = initial_ellipsoid(points, min_radius)
    initial = centre + unit @ linear.T
    laplacian = _graph_laplacian(len(unit), faces)
    bending = (laplacian.T @ laplacian).tocsc()
    bending_initial = bending @ initial
    vertices = initial.copy()
    rows = np.repeat(np.arange(len(points)), 3)
    for alpha in stiffness:
        triangles, weights, _ = _closest_on_mesh(vertices, faces, points)
        attach = sparse.csr_matrix((weights.ravel(), (rows, faces[triangles].ravel())),
                                   shape=(len(points), len(unit)))
        system = (attach.T @ attach + alpha * bending).tocsc()
        right = attach.T @ points + alpha * bending_initial
        vertices = splu(system).solve(right)
    _, _, distances = _closest_on_mesh(vertices, faces, points)
    return TemplateFit(vertices=vertices, faces=faces, num_points=len(points), residual_mm=float(distances.mean()))


def is_closed_mesh(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """True when every edge is shared by exactly two triangles (closed, manifold; VTK's feature edges)."""
    vtk = _vtk()
    edges = vtk.vtkFeatureEdges()
    edges.SetInputData(_polydata(vertices, faces))
    edges.BoundaryEdgesOn()
    edges.NonManifoldEdgesOn()
    edges.FeatureEdgesOff()
    edges.ManifoldEdgesOff()
    edges.Update()
    return edges.GetOutput().GetNumberOfCells() == 0


def rasterise_mesh(vertices: np.ndarray, faces: np.ndarray, shape: Sequence[int],
                   spacing: Sequence[float]) -> np.ndarray:
    """Bool mask of array shape ``(Z, Y, X)``: voxels whose centre is inside the closed mesh.

    ``vertices`` in the fit frame (mm, x y z, origin at the first voxel's centre); ``shape`` and
    ``spacing`` in array order (z, y, x). VTK's ``vtkPolyDataToImageStencil`` does the scan conversion.
    """
    vtk = _vtk()
    from vtk.util.numpy_support import vtk_to_numpy

    nz, ny, nx = (int(n) for n in shape)
    sz, sy, sx = (float(s) for s in spacing)
    to_stencil = vtk.vtkPolyDataToImageStencil()
    to_stencil.SetInputData(_polydata(vertices, faces))
    to_stencil.SetOutputOrigin(0.0, 0.0, 0.0)
    to_stencil.SetOutputSpacing(sx, sy, sz)
    to_stencil.SetOutputWholeExtent(0, nx - 1, 0, ny - 1, 0, nz - 1)
    to_image = vtk.vtkImageStencilToImage()
    to_image.SetInputConnection(to_stencil.GetOutputPort())
    to_image.SetInsideValue(1)
    to_image.SetOutsideValue(0)
    to_image.SetOutputScalarTypeToUnsignedChar()
    to_image.Update()
    image = to_image.GetOutput()
    values = vtk_to_numpy(image.GetPointData().GetScalars())
    dims = image.GetDimensions()
    if tuple(dims) != (nx, ny, nz):
        raise RuntimeError(f"rasterise_mesh: VTK returned dimensions {dims}, expected {(nx, ny, nz)}")
    return values.reshape(nz, ny, nx).astype(bool)


def combine_templates(masks: Mapping[int, np.ndarray], shape: Sequence[int]) -> np.ndarray:
    """One label map from per-label template masks: where templates overlap the smaller one wins.

    Larger templates are painted first, smaller ones over them, so a small structure next to (or
    inside) a large one is not erased by it. Ties: the lower label first.
    """
    labels = np.zeros(tuple(int(n) for n in shape), dtype=np.uint8)
    order = sorted(masks, key=lambda label: (-int(np.count_nonzero(masks[label])), label))
    for label in order:
        labels[masks[label]] = label
    return labels


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two bool masks; NaN when both are empty (nnU-Net's convention)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return float("nan") if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def mean_surface_distance(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> float:
    """Symmetric mean surface distance (mm) between the boundary voxels of two masks; NaN if one is empty.

    Mean over the boundary voxels of both masks of the distance (voxel centres, spacing
    honoured) to the nearest boundary voxel of the other one.
    """
    from scipy.ndimage import distance_transform_edt

    edge_a, edge_b = boundary_mask(np.asarray(a, dtype=bool)), boundary_mask(np.asarray(b, dtype=bool))
    if not edge_a.any() or not edge_b.any():
        return float("nan")
    to_b = distance_transform_edt(~edge_b, sampling=spacing)
    to_a = distance_transform_edt(~edge_a, sampling=spacing)
    return float(np.concatenate([to_b[edge_a], to_a[edge_b]]).mean())
