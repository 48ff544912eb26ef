"""Inference time per case: whole-scan STD/EXP model versus nnU-Net's sliding-window model.

Question: what does predicting a case in one window (the whole-scan trainers) cost compared
with nnU-Net's default sliding-window inference on the same volume, through nnU-Net's own
``nnUNetv2_predict``?

Set-up (cached, see ``--cache``):

1. a phantom knee dataset (``nnunet_shape.demo.phantoms.write_phantom_dataset``: 5 training cases,
   1 test case, 40 x 64 x 64 voxels of 1.4 x 0.7 x 0.7 mm) in an nnU-Net raw folder;
2. ``nnUNetv2_plan_and_preprocess -c 3d_fullres -gpu_memory_target 0.1 -overwrite_plans_name
   nnUNetPlans_bench``. The GPU-memory target is scaled down with the volume so that nnU-Net's
   default patch covers the same fraction of the phantom as it does of a real knee scan: for
   160 x 384 x 384 at 0.7 x 0.36 x 0.36 mm the planner (8 GB) picks an 80 x 192 x 160 patch,
   36 windows per case at step 0.5; for the phantom at 0.1 GB it picks 24 x 32 x 32, 27
   windows. (At 8 GB the planner's patch would be the whole 40 x 64 x 64 phantom and both
   models would run one window: nothing to compare.)
3. checkpoints *without training* (inference time does not depend on the weight values):
   ``nnUNetTrainer`` (PlainConvUNet, sliding window) and ``nnUNetTrainerShapeDescriptors``
   (STD/EXP, whole-scan patch written into its plans) are constructed in-process, initialised
   and saved as ``fold_all/checkpoint_final.pth`` with ``plans.json``/``dataset.json``, exactly
   where ``nnUNetv2_train`` would put them.

Measured, per model, on the test case (``-device cpu``, nnU-Net's defaults: step 0.5, Gaussian
weighting; mirroring test-time augmentation off unless ``--tta``: it multiplies the network
evaluations of both models by 8 and would make the default run far longer on a CPU):

* ``nnUNetv2_predict`` wall time of the console script (start-up included: imports, the trainer
  lookup, worker processes);
* the predictor in-process (``nnUNetPredictor.predict_single_npy_array``: preprocessing,
  sliding-window prediction, conversion back to the original geometry), median after warm-up,
  the two models interleaved;
* its sliding-window part alone (``predict_logits_from_preprocessed_data``, timed inside the
  same runs);
* windows per case (``_internal_get_sliding_window_slicers`` on the padded preprocessed case)
  and network evaluations (counted with a forward pre-hook; 8 per window with ``--tta``).

    .venv/bin/python benchmarks/inference_time.py              # a few minutes the first time, less cached
    .venv/bin/python benchmarks/inference_time.py --tta --repeats 1
    .venv/bin/python benchmarks/inference_time.py --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_ratio, format_seconds, markdown_table, time_interleaved  # noqa: E402

DATASET_ID = 790
DATASET_NAME = "BenchPhantom"
PLANS = "nnUNetPlans_bench"
CONFIGURATION = "3d_fullres"
FOLD = "all"
GPU_MEMORY_TARGET_GB = 0.1
DEFAULT_SHAPE: tuple[int, int, int] = (40, 64, 64)
#: (label, trainer class name); the first is the baseline
MODELS: tuple[tuple[str, str], ...] = (
    ("nnU-Net sliding window (PlainConvUNet)", "nnUNetTrainer"),
    ("whole scan (STD/EXP)", "nnUNetTrainerShapeDescriptors"),
)
VENV_BIN = Path(sys.executable).parent
#: bump when the set-up changes so that stale caches are not reused
CACHE_VERSION = 2


def default_cache_dir(shape: Sequence[int] = DEFAULT_SHAPE) -> Path:
    """``$TMPDIR/nnunet_shape_bench/inference_time_v1_40x64x64``."""
    tag = "x".join(str(int(s)) for s in shape)
    return Path(tempfile.gettempdir()) / "nnunet_shape_bench" / f"inference_time_v{CACHE_VERSION}_{tag}"


def nnunet_environment(root: Path, **extra: str) -> dict[str, str]:
    """nnU-Net paths under ``root``, our trainers on ``nnUNet_extTrainer``, no torch.compile."""
    from nnunet_shape.cli import trainers_directory

    env = {
        "nnUNet_raw": str(root / "nnUNet_raw"),
        "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
        "nnUNet_results": str(root / "nnUNet_results"),
        "nnUNet_extTrainer": trainers_directory(),
        "nnUNet_compile": "false",
    }
    # nnUNet_def_n_proc is left alone on purpose: nnU-Net also caps the predictor's torch threads
    # with it (predict_logits_from_preprocessed_data), so setting it would slow the console script
    # down relative to the in-process predictor; worker processes are set with -np/-npp/-nps.
    env.update(extra)
    return env


@contextlib.contextmanager
def environment(variables: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block, then restore the previous values."""
    previous = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run(args: Sequence[str], env: Mapping[str, str], log: Path) -> float:
    """Run a console script with ``env`` added to the current environment; return its wall time."""
    start = time.perf_counter()
    completed = subprocess.run(list(args), env={**os.environ, **env, "PATH": f"{VENV_BIN}{os.pathsep}"
                                                + os.environ.get("PATH", "")},
                               capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    log.write_text(completed.stdout + "\n--- stderr ---\n" + completed.stderr)
    if completed.returncode != 0:
        raise RuntimeError(
            f"benchmarks/inference_time.py: {' '.join(args)} failed with exit code {completed.returncode}; "
            f"log: {log}\n{completed.stderr[-3000:]}")
    return elapsed


def dataset_folder_name() -> str:
    return f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"


def model_folder(root: Path, trainer: str) -> Path:
    return root / "nnUNet_results" / dataset_folder_name() / f"{trainer}__{PLANS}__{CONFIGURATION}"


def _save_untrained_checkpoint(root: Path, trainer_name: str) -> Path:
    """Construct ``trainer_name`` in-process, initialise it and save it as a finished training."""
    from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    import nnunet_shape.nnunet.training.shape_trainers as shape_trainers

    trainer_class = nnUNetTrainer if trainer_name == "nnUNetTrainer" else getattr(shape_trainers, trainer_name)
    preprocessed = root / "nnUNet_preprocessed" / dataset_folder_name()
    plans = load_json(str(preprocessed / f"{PLANS}.json"))
    plans["continue_training"] = False  # nnUNetTrainer.__init__ pops it (run_training sets it)
    dataset_json = load_json(str(preprocessed / "dataset.json"))
    with environment(nnunet_environment(root)):
        trainer = trainer_class(plans, CONFIGURATION, FOLD, dataset_json, torch.device("cpu"))
        trainer.initialize()
        # sets inference_allowed_mirroring_axes (saved in the checkpoint), as training would
        trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        output = Path(trainer.output_folder)
        output.mkdir(parents=True, exist_ok=True)
        base = Path(trainer.output_folder_base)
        # what nnUNetTrainer.on_train_start copies for inference
        save_json(trainer.plans_manager.plans, str(base / "plans.json"), sort_keys=False)
        save_json(trainer.dataset_json, str(base / "dataset.json"), sort_keys=False)
        shutil.copyfile(preprocessed / "dataset_fingerprint.json", base / "dataset_fingerprint.json")
        trainer.save_checkpoint(str(output / "checkpoint_final.pth"))
    return output / "checkpoint_final.pth"


def prepare(cache: Path, shape: Sequence[int] = DEFAULT_SHAPE, verbose: bool = True) -> dict[str, float]:
    """Create (or reuse) the dataset, the plans/preprocessed data and the two checkpoints.

    Returns the seconds spent per set-up step (0 for a cached step).
    """
    from nnunet_shape.demo.phantoms import write_phantom_dataset

    cache.mkdir(parents=True, exist_ok=True)
    logs = cache / "logs"
    logs.mkdir(exist_ok=True)
    spent = {"dataset": 0.0, "plan_and_preprocess": 0.0, "checkpoints": 0.0}
    env = nnunet_environment(cache)

    raw_done = cache / ".raw_done"
    if not raw_done.exists():
        start = time.perf_counter()
        shutil.rmtree(cache / "nnUNet_raw", ignore_errors=True)
        write_phantom_dataset(cache / "nnUNet_raw", n_train=5, n_test=1, dataset_id=DATASET_ID,
                              name=DATASET_NAME, shape=tuple(int(s) for s in shape))
        raw_done.touch()
        spent["dataset"] = time.perf_counter() - start
    preprocessed_done = cache / ".preprocessed_done"
    if not preprocessed_done.exists():
        if verbose:
            print("inference_time: nnUNetv2_plan_and_preprocess ...", flush=True)
        shutil.rmtree(cache / "nnUNet_preprocessed", ignore_errors=True)
        # no nnUNet_n_proc_DA here: the planner breaks with it
        spent["plan_and_preprocess"] = _run(
            ["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", CONFIGURATION, "-np", "1",
             "-gpu_memory_target", str(GPU_MEMORY_TARGET_GB), "-overwrite_plans_name", PLANS],
            env, logs / "plan_and_preprocess.log")
        preprocessed_done.touch()
    start = time.perf_counter()
    for _, trainer in MODELS:
        if not (model_folder(cache, trainer) / f"fold_{FOLD}" / "checkpoint_final.pth").exists():
            if verbose:
                print(f"inference_time: untrained checkpoint for {trainer} ...", flush=True)
            _save_untrained_checkpoint(cache, trainer)
            spent["checkpoints"] = time.perf_counter() - start
    return spent


def _test_images(cache: Path) -> list[Path]:
    return sorted((cache / "nnUNet_raw" / dataset_folder_name() / "imagesTs").glob("*_0000.nii.gz"))


def _make_predictor(cache: Path, trainer: str, device: torch.device, tta: bool):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                                perform_everything_on_device=device.type == "cuda", device=device,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    with environment(nnunet_environment(cache)):
        predictor.initialize_from_trained_model_folder(str(model_folder(cache, trainer)), use_folds=(FOLD,),
                                                       checkpoint_name="checkpoint_final.pth")
    return predictor


class _CountingForward:
    """Counts calls of the wrapped network (a forward pre-hook)."""

    def __init__(self, network: torch.nn.Module) -> None:
        self.calls = 0
        self._handle = network.register_forward_pre_hook(self._hook)

    def _hook(self, module: torch.nn.Module, inputs: Any) -> None:
        self.calls += 1

    def remove(self) -> None:
        self._handle.remove()


class _TimedLogits:
    """Wraps a predictor's ``predict_logits_from_preprocessed_data`` to record its duration, so one
    ``predict_single_npy_array`` run gives both the whole predictor time and its sliding-window part."""

    def __init__(self, predictor: Any, device: torch.device) -> None:
        self.seconds: list[float] = []
        self._original = predictor.predict_logits_from_preprocessed_data
        self._device = device
        predictor.predict_logits_from_preprocessed_data = self

    def __call__(self, data: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        result = self._original(data)
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        self.seconds.append(time.perf_counter() - start)
        return result


def run(device: str = "cpu", shape: Sequence[int] = DEFAULT_SHAPE, repeats: int = 2, warmup: int = 1,
        cli_repeats: int = 1, tta: bool = False, cache: str | os.PathLike | None = None,
        verbose: bool = True) -> list[dict[str, Any]]:
    """Prepare (cached) and time both models; one dict per model.

    ``tta``: mirroring test-time augmentation (nnU-Net's default; 8 network evaluations per
    window in 3D for both models, so it scales both times alike). Off by default to keep the
    run short. The first in-process prediction of each model (which also counts the windows and
    network evaluations) is the warm-up.

    Keys: ``model``, ``trainer``, ``patch_size``, ``case_shape`` (preprocessed), ``windows``,
    ``network_evaluations``, ``cli_seconds`` (median wall time of ``nnUNetv2_predict``),
    ``predictor_seconds`` (in-process ``predict_single_npy_array``, median), ``logits_seconds``
    (its sliding-window part, ``predict_logits_from_preprocessed_data``, median), the
    ``*_ratio`` of each time to the sliding-window baseline, ``tta``, ``device``, ``repeats``,
    ``cli_repeats``, ``setup_seconds`` (time spent preparing in this call; 0 if cached).
    """
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    torch_device = torch.device(device)
    cache_dir = Path(cache) if cache is not None else default_cache_dir(shape)
    setup = prepare(cache_dir, shape, verbose)
    images = _test_images(cache_dir)
    if not images:
        raise RuntimeError(f"benchmarks/inference_time.py: no test image in {cache_dir} (delete the cache)")
    image, properties = SimpleITKIO().read_images([str(images[0])])

    predictors = {trainer: _make_predictor(cache_dir, trainer, torch_device, tta) for _, trainer in MODELS}
    info: dict[str, dict[str, Any]] = {}
    logits_timers: dict[str, _TimedLogits] = {}
    for _, trainer in MODELS:
        predictor = predictors[trainer]
        patch = tuple(int(p) for p in predictor.configuration_manager.patch_size)
        logits_timers[trainer] = _TimedLogits(predictor, torch_device)
        shapes: list[tuple[int, ...]] = []
        original_slicers = predictor._internal_get_sliding_window_slicers

        def record_slicers(image_size: tuple[int, ...], original: Any = original_slicers,
                           shapes: list = shapes) -> Any:
            shapes.append(tuple(int(s) for s in image_size))
            return original(image_size)

        predictor._internal_get_sliding_window_slicers = record_slicers
        counter = _CountingForward(predictor.network)
        for _ in range(warmup):  # the warm-up run also counts windows and network evaluations
            predictor.predict_single_npy_array(image, properties, None, None, False)
        counter.remove()
        del predictor._internal_get_sliding_window_slicers
        windows = len(original_slicers(shapes[-1])) if shapes else 0
        info[trainer] = dict(patch_size=patch, case_shape=shapes[-1] if shapes else None, windows=windows,
                             network_evaluations=counter.calls // max(warmup, 1))
        logits_timers[trainer].seconds.clear()

    if verbose:
        print("inference_time: timing the predictors in-process ...", flush=True)
    predictor_times = time_interleaved(
        {trainer: (lambda p=predictors[trainer]: p.predict_single_npy_array(image, properties, None, None, False))
         for _, trainer in MODELS}, repeats=repeats, warmup=0, device=torch_device)

    if verbose:
        print("inference_time: timing nnUNetv2_predict ...", flush=True)
    env = nnunet_environment(cache_dir)
    logs = cache_dir / "logs"

    def cli(trainer: str) -> None:
        output = cache_dir / "predictions" / trainer
        shutil.rmtree(output, ignore_errors=True)
        _run(["nnUNetv2_predict", "-i", str(images[0].parent), "-o", str(output), "-d", str(DATASET_ID),
              "-c", CONFIGURATION, "-p", PLANS, "-tr", trainer, "-f", FOLD, "-device", torch_device.type,
              "-npp", "1", "-nps", "1", "--disable_progress_bar"] + ([] if tta else ["--disable_tta"]),
             env, logs / f"predict_{trainer}.log")
        if not list(output.glob("*.nii.gz")):
            raise RuntimeError(f"benchmarks/inference_time.py: nnUNetv2_predict wrote nothing to {output}")

    cli_times = time_interleaved({trainer: (lambda t=trainer: cli(t)) for _, trainer in MODELS},
                                 repeats=cli_repeats, warmup=0)

    baseline = MODELS[0][1]
    logits_median = {t: float(statistics.median(timer.seconds)) for t, timer in logits_timers.items()}
    rows = []
    for label, trainer in MODELS:
        rows.append(dict(
            model=label, trainer=trainer, device=str(torch_device), tta=tta, **info[trainer],
            cli_seconds=cli_times[trainer].median, cli_ratio=cli_times[trainer].ratio_to(cli_times[baseline]),
            predictor_seconds=predictor_times[trainer].median,
            predictor_ratio=predictor_times[trainer].ratio_to(predictor_times[baseline]),
            logits_seconds=logits_median[trainer],
            logits_ratio=logits_median[trainer] / logits_median[baseline],
            repeats=repeats, cli_repeats=cli_repeats, setup_seconds=sum(setup.values()),
        ))
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`run`'s rows."""
    def size(values: Sequence[int]) -> str:
        return "x".join(str(v) for v in values)

    table = markdown_table(
        ["model", "patch", "windows / case", "network evals", "nnUNetv2_predict (wall)", "ratio",
         "predictor in-process", "ratio", "sliding-window logits", "ratio"],
        [[r["model"], size(r["patch_size"]), r["windows"], r["network_evaluations"],
          format_seconds(r["cli_seconds"]), format_ratio(r["cli_ratio"]),
          format_seconds(r["predictor_seconds"]), format_ratio(r["predictor_ratio"]),
          format_seconds(r["logits_seconds"]), format_ratio(r["logits_ratio"])] for r in rows],
        align=["l", "l", "r", "r", "r", "r", "r", "r", "r", "r"],
    )
    first = rows[0]
    return (f"One test case of {size(first['case_shape'])} voxels (preprocessed), device {first['device']}, "
            f"step 0.5, Gaussian weighting, mirroring TTA {'on' if first['tta'] else 'off'}; in-process times "
            f"are medians of {first['repeats']} interleaved runs after warm-up, the console script is timed "
            f"{first['cli_repeats']}x per model. Ratios are to the sliding-window model in the same run.\n\n"
            f"{table}")


def target_met(rows: Sequence[dict[str, Any]]) -> bool:
    """The whole-scan model runs exactly one window per case."""
    return all(r["windows"] == 1 for r in rows if r["trainer"] != MODELS[0][1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--repeats", type=int, default=2, help="in-process timed runs per model (default 2)")
    parser.add_argument("--tta", action="store_true",
                        help="mirroring test-time augmentation (nnU-Net's default; 8x the network evaluations)")
    parser.add_argument("--cli-repeats", type=int, default=1, help="nnUNetv2_predict runs per model (default 1)")
    parser.add_argument("--cache", default=None, help=f"set-up cache folder (default {default_cache_dir()})")
    parser.add_argument("--fresh", action="store_true", help="delete the cache first")
    args = parser.parse_args(argv)
    cache = Path(args.cache) if args.cache else default_cache_dir()
    if args.fresh:
        shutil.rmtree(cache, ignore_errors=True)
    rows = run(args.device, repeats=args.repeats, cli_repeats=args.cli_repeats, tta=args.tta, cache=cache)
    print("## Inference time per case\n")
    print(format_table(rows))
    print(f"\nWhole-scan model: exactly one window per case: {'yes' if target_met(rows) else 'NO'}. "
          f"Set-up (dataset, plans, checkpoints) took {rows[0]['setup_seconds']:.0f} s in this run "
          f"(0 = cached in {cache}).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
