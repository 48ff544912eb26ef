"""``nnUNetv2_export_descriptors`` under load: a TotalSegmentator-like label map, 100+ labels.

Question: does the descriptor export of one case run in memory O(voxels) -- not O(voxels x
classes) -- and in time close to a few passes over the map? Baseline: SimpleITK's
``LabelShapeStatisticsImageFilter`` on the same file (the usual tool for per-label volume,
centroid, principal moments and perimeter), in the same run.

The map is synthetic (512 x 512 x 400 voxels, 117 labels like TotalSegmentator's: a few large
organs, many small bones and vessels, each an ellipsoid with a few islands, inside a body
ellipsoid), written once as ``.nii.gz``. Each measurement runs in a FRESH process: imports
first, then the peak resident memory is reset (``/proc/self/clear_refs``) and the case is
processed from the file -- read, every label measured, results written -- so the reported
peak is what one case costs on top of the interpreter. Variants are interleaved (ours, SimpleITK,
ours, ...); the median time is reported. A second map with the same voxels but 12 labels shows
whether the cost depends on the number of classes. The volumes and centroids of ours and
SimpleITK's are compared as a sanity check.

    .venv/bin/python benchmarks/export_under_load.py             # 512 x 512 x 400, 117 labels
    .venv/bin/python benchmarks/export_under_load.py --small     # 256 x 256 x 200 (make bench)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, machine_markdown, markdown_table  # noqa: E402

FULL_SHAPE = (400, 512, 512)  # array order (z, y, x), as SimpleITK holds it
SMALL_SHAPE = (200, 256, 256)
N_LABELS = 117  # TotalSegmentator v2's class count
FEW_LABELS = 12
SPACING_XYZ = (0.8, 0.8, 1.5)
#: the targets: peak memory per voxel bounded whatever the class count (the map is 1 byte per
#: voxel in the file; nnU-Net's reader returns it as float32, 4 bytes, and the export holds it as
#: int32, 4 more), and the time per case nearly independent of the class count (O(voxels), not
#: O(voxels x classes)): 117 labels at most 1.5x the time of 12 labels on the same voxels
TARGET_BYTES_PER_VOXEL = 16.0
TARGET_TIME_VS_FEW_LABELS = 1.5


# ------------------------------------------------------------------------------ the label map
def totalsegmentator_like(shape: Sequence[int], n_labels: int = N_LABELS, seed: int = 0) -> np.ndarray:
    """A (z, y, x) uint8 label map: a body ellipsoid holding ``n_labels`` ellipsoidal structures
    of very different sizes (radii 6-40 % of the body's: a few organs, many small bones and
    vessels), 30 % of them with an island; painted largest first so that every label survives
    (about 12 % of the voxels are labelled, as in a TotalSegmentator map of a trunk)."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in shape)
    labels = np.zeros(shape, dtype=np.uint8)
    centre = np.array(shape) / 2
    body = np.array(shape) * np.array([0.48, 0.40, 0.45])
    structures = []
    for label in range(1, n_labels + 1):
        size = rng.choice([0.40, 0.25, 0.12, 0.06], p=[0.05, 0.15, 0.4, 0.4])
        radii = np.maximum(body * size * rng.uniform(0.6, 1.4, 3), 1.5)
        position = centre + rng.uniform(-0.6, 0.6, 3) * (body - radii)
        pieces = [(position, radii)]
        if rng.random() < 0.3:  # an island (a vessel cut, a split structure)
            pieces.append((position + rng.uniform(-3, 3, 3) * radii, radii / 3))
        structures.append((float(np.prod(radii)), label, pieces))
    for _, label, pieces in sorted(structures, key=lambda item: -item[0]):
        for middle, half in pieces:
            low = np.maximum(np.floor(middle - half).astype(int), 0)
            high = np.minimum(np.ceil(middle + half).astype(int) + 1, shape)
            if np.any(high <= low):
                continue
            grid = np.ogrid[tuple(slice(lo, hi) for lo, hi in zip(low, high))]
            inside = sum(((g - m) / r) ** 2 for g, m, r in zip(grid, middle, half)) <= 1.0
            labels[tuple(slice(lo, hi) for lo, hi in zip(low, high))][inside] = label
    return labels


def write_case(folder: Path, labels: np.ndarray, n_labels: int) -> tuple[Path, Path]:
    """``folder/case.nii.gz`` and ``folder/dataset.json`` (labels ``label_001`` ...)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin((-200.0, -180.0, 40.0))
    path = folder / "case.nii.gz"
    sitk.WriteImage(image, str(path), True)
    dataset_json = {"channel_names": {"0": "CT"}, "file_ending": ".nii.gz", "numTraining": 1,
                    "labels": {"background": 0, **{f"label_{i:03d}": i for i in range(1, n_labels + 1)}}}
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    return path, folder / "dataset.json"


# ------------------------------------------------------------------------------ one measurement
def _status_kib(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _worker(method: str, path: Path, dataset_json: Path, output: Path) -> dict[str, Any]:
    """Runs in a fresh process: one case, timed, with its peak resident memory."""
    import SimpleITK as sitk
    import torch  # noqa: F401  (imported before the baseline, as nnU-Net's scripts do)

    from nnunet_shape.descriptor_files.export import export_files

    # warm-up on a tiny case (lazy imports of nnU-Net's readers, first torch ops): not counted
    tiny = output.parent / f"warmup_{method}"
    tiny_path, tiny_json = write_case(tiny, np.pad(np.ones((3, 3, 3), np.uint8), 1), 1)
    export_files({"case": tiny_path}, tiny / "out", json.loads(tiny_json.read_text()), num_processes=1,
                 overwrite=True)
    sitk.LabelShapeStatisticsImageFilter().Execute(sitk.ReadImage(str(tiny_path)))

    baseline_kib = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    wall, cpu = time.perf_counter(), time.process_time()
    values: dict[str, Any] = {}
    if method == "ours":
        content = json.loads(dataset_json.read_text())
        export_files({"case": path}, output, content, num_processes=1, overwrite=True)
        case = json.loads((output / "case.json").read_text())
        for entry in case["classes"].values():
            if entry["voxels"]:
                values[str(entry["label"])] = (entry["volume_mm3"], entry["centroid_world_mm"])
    else:
        image = sitk.ReadImage(str(path))
        statistics_filter = sitk.LabelShapeStatisticsImageFilter()
        statistics_filter.SetComputePerimeter(method == "sitk")
        statistics_filter.Execute(image)
        for label in statistics_filter.GetLabels():
            statistics_filter.GetPrincipalMoments(label)
            values[str(label)] = (statistics_filter.GetPhysicalSize(label), list(statistics_filter.GetCentroid(label)))
    seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    return {"method": method, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "peak_mib": (_status_kib("VmHWM") - baseline_kib) / 1024, "values": values}


def _measure(method: str, path: Path, dataset_json: Path, output: Path) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, __file__, "--worker", method, "--file", str(path), "--dataset-json", str(dataset_json),
         "--work", str(output)], capture_output=True, text=True, check=False,
        env={**os.environ, "nnUNet_def_n_proc": "1"})
    if completed.returncode != 0:
        raise RuntimeError(f"benchmarks/export_under_load.py worker {method} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _agreement(ours: dict, sitk_values: dict) -> tuple[float, float]:
    """Largest relative volume difference and centroid distance (mm) over the common labels."""
    volume, distance = 0.0, 0.0
    for label, (v_ours, c_ours) in ours.items():
        v_sitk, c_sitk = sitk_values[label]
        volume = max(volume, abs(v_ours - v_sitk) / v_sitk)
        distance = max(distance, float(np.linalg.norm(np.subtract(c_ours, c_sitk))))
    return volume, distance


# ------------------------------------------------------------------------------ the benchmark
def run(small: bool = False, shape: Sequence[int] | None = None, repeats: int = 1,
        label_counts: Sequence[int] = (N_LABELS, FEW_LABELS), seed: int = 0) -> list[dict[str, Any]]:
    """One row per (label count, method): median time per case, peak memory above the
    interpreter, bytes per voxel, time relative to SimpleITK (with perimeter) on the same map."""
    shape = tuple(shape) if shape is not None else (SMALL_SHAPE if small else FULL_SHAPE)
    voxels = int(np.prod(shape))
    base = totalsegmentator_like(shape, max(label_counts), seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="nnunet_shape_export_load_") as tmp:
        for count in label_counts:
            labels = base if count == max(label_counts) else np.where(base > 0, (base - 1) % count + 1, 0
                                                                     ).astype(np.uint8)
            present = int(np.count_nonzero(np.bincount(labels.ravel(), minlength=count + 1)[1:]))
            folder = Path(tmp) / f"labels_{count}"
            path, dataset_json = write_case(folder, labels, count)
            del labels
            results: dict[str, list[dict]] = {"ours": [], "sitk": [], "sitk_no_perimeter": []}
            for _ in range(repeats):
                for method in results:  # interleaved
                    results[method].append(_measure(method, path, dataset_json, folder / f"out_{method}"))
            volume_difference, centroid_distance = _agreement(results["ours"][0]["values"],
                                                              results["sitk"][0]["values"])
            sitk_seconds = statistics.median(r["seconds"] for r in results["sitk"])
            for method, runs in results.items():
                seconds = statistics.median(r["seconds"] for r in runs)
                peak = max(r["peak_mib"] for r in runs)
                row = {"shape": "x".join(str(n) for n in shape), "labels": present, "method": method,
                       "seconds": seconds, "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs),
                       "peak_mib": peak, "bytes_per_voxel": peak * 2**20 / voxels,
                       "vs_sitk": seconds / sitk_seconds, "file_mib": path.stat().st_size / 2**20}
                if method == "ours":
                    row.update(max_volume_difference=volume_difference, max_centroid_distance_mm=centroid_distance)
                rows.append(row)
    return rows


_NAMES = {"ours": "nnUNetv2_export_descriptors (ours)", "sitk": "SimpleITK LabelShapeStatistics",
          "sitk_no_perimeter": "SimpleITK LabelShapeStatistics, no perimeter"}


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    table = markdown_table(
        ["map", "labels", "method", "time per case", "CPU time", "peak memory", "bytes / voxel", "time vs SimpleITK"],
        [[r["shape"], r["labels"], _NAMES[r["method"]], f"{r['seconds']:.2f} s", f"{r['cpu_seconds']:.2f} s",
          f"{r['peak_mib']:.0f} MiB", f"{r['bytes_per_voxel']:.1f}", f"{r['vs_sitk']:.2f}x"] for r in rows],
        align=["l", "r", "l", "r", "r", "r", "r", "r"])
    checks = [f"{r['shape']}, {r['labels']} labels: volumes within {100 * r['max_volume_difference']:.2g} %, "
              f"centroids within {r['max_centroid_distance_mm']:.2g} mm of SimpleITK's" for r in rows
              if r["method"] == "ours"]
    return table + "\n\nAgreement: " + "; ".join(checks) + "."


def verdict(rows: Sequence[dict[str, Any]]) -> tuple[bool | None, str]:
    """Memory per voxel of every row of ours within the target, and the time of the most labels
    within the target factor of the fewest (None when only one label count ran)."""
    ours = sorted((r for r in rows if r["method"] == "ours"), key=lambda r: r["labels"])
    if not ours:
        return None, "no row of ours"
    memory_ok = all(r["bytes_per_voxel"] <= TARGET_BYTES_PER_VOXEL for r in ours)
    detail = "; ".join(f"{r['labels']} labels: {r['bytes_per_voxel']:.1f} B/voxel, {r['seconds']:.2f} s "
                       f"({r['vs_sitk']:.2f}x SimpleITK's)" for r in ours)
    if len(ours) < 2:
        return (None if memory_ok else False), detail
    growth = ours[-1]["seconds"] / ours[0]["seconds"]
    detail += f"; {ours[-1]['labels']} vs {ours[0]['labels']} labels: {growth:.2f}x the time"
    return memory_ok and growth <= TARGET_TIME_VS_FEW_LABELS, detail


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="256 x 256 x 200 instead of 512 x 512 x 400")
    parser.add_argument("--shape", type=lambda t: tuple(int(v) for v in t.split("x")), default=None,
                        help="array shape ZxYxX (overrides --small)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per method (fresh process each)")
    parser.add_argument("--worker", choices=["ours", "sitk", "sitk_no_perimeter"], help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dataset-json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(_worker(args.worker, args.file, args.dataset_json, args.work)))
        return 0
    rows = run(small=args.small, shape=args.shape, repeats=args.repeats)
    print("## nnUNetv2_export_descriptors under load\n")
    print(machine_markdown(machine_info("cpu")))
    print()
    print(format_table(rows))
    met, detail = verdict(rows)
    print(f"\nTarget: <= {TARGET_BYTES_PER_VOXEL:g} bytes per voxel whatever the class count, and {N_LABELS} labels "
          f"<= {TARGET_TIME_VS_FEW_LABELS:g}x the time of {FEW_LABELS} -> "
          f"{ {True: 'met', False: 'MISSED', None: 'n/a'}[met]} ({detail})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
