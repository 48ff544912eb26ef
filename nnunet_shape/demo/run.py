"""``make demo``: paper 000's Table 1 in miniature, on knee phantoms (or real brain anatomy), on a CPU.

``python -m nnunet_shape.demo --output demo_output`` runs, with nnU-Net's own console scripts:

1. ``nnunet-shape phantoms``-style knee phantoms (training cases with labelsTr, test cases with
   labelsTs) in ``OUTPUT/work/nnUNet_raw`` -- with ``--data brain`` instead ``nnunet-shape
   brains``-style deformed MNI152 brains (gray and white matter; ``--hemispheres``: x left/right);
2. ``nnUNetv2_plan_and_preprocess`` (3d_fullres);
3. ``nnUNetv2_train`` of the three settings of Table 1 -- full supervision
   (``nnUNetTrainerShapeFullSupervision``), V+C (``nnUNetTrainerShapeDescriptorsVC``) and V+C+D
   (``nnUNetTrainerShapeDescriptors``), with ``--image-aware`` also V+C+D + image terms
   (``nnUNetTrainerShapeDescriptorsImageAware``) -- all with the same CPU-sized schedule (the
   trainers' ``_demo`` length variant: same epochs, iterations and batch size for every row);
4. ``nnUNetv2_predict`` of the test cases with each model;
5. postprocessing, two ways: the one nnU-Net's decision chooses per label on the fold's validation
   predictions (``nnunet-shape determine-postprocessing``, :func:`decide_postprocessing`; the
   headline), and the largest connected component of every label, unconditionally
   (:func:`nnunet_shape.core.connected_components.remove_all_but_largest_component_from_segmentation`);
6. evaluation (:func:`nnunet_shape.nnunet.evaluate.evaluate_folder`): Dice per class, relative volume
   error and centroid distance, raw and after each postprocessing;
7. ``OUTPUT/report.md`` (Table 1, descriptor errors, schedule, timings, figures),
   ``OUTPUT/table.csv``, ``OUTPUT/descriptor_errors.csv``, the training curves and one overlay PNG
   per test case.

The stages are here; the rows, their trainers, the data sets (:class:`~nnunet_shape.demo.settings.DemoData`:
what differs between the knee phantoms and the brains) and the options are in
:mod:`nnunet_shape.demo.settings`, the progress bars and the parsing of nnU-Net's output in
:mod:`nnunet_shape.demo.console`, the tables and ``report.md`` in :mod:`nnunet_shape.demo.report`.

Every stage shows a progress bar (``[k/N] stage``, with elapsed time); nnU-Net's own lines
(epoch, losses, pseudo Dice, descriptor satisfaction) stream through. Full logs of every command
are kept in ``OUTPUT/logs``.

Why the default phantom grid is ``32 x 48 x 48`` (not the generator's ``40 x 64 x 64``): the
whole scan is one patch, and a training iteration on ``40 x 64 x 64`` costs ~2.6x one on
``32 x 48 x 48`` on 2 CPU cores. The demo keeps the generator's field of view (so the same knee
anatomy in millimetres) and coarsens the voxels (0.93 mm in-plane instead of 0.7 mm), which buys
the descriptor-only models the iterations they need within the 20-minute budget.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnunet_shape.demo.console import (
    StageFailed,
    StageRecord,
    Stages,
    console_script,
    line_handler,
    nnunet_environment,
    stream_command,
)
from nnunet_shape.demo.report import (
    TableRow,
    baseline_rows,
    baseline_verdict,
    case_overlay,
    chance_dice,
    compartments_found,
    copy_curves,
    format_dice_table,
    ordering_verdict,
    table_rows,
    write_descriptor_errors_csv,
    write_report,
    write_table_csv,
)
from nnunet_shape.demo.settings import (
    BRAIN,
    BRAIN_HEMISPHERES,
    CONFIGURATION,
    DEFAULT_FOLD,
    DEFAULT_SHAPE,
    DEFAULT_TRAINER_SUFFIX,
    DEMO_DATA,
    HEADLINE_POSTPROCESSING,
    KNEE,
    MARKER_FILE,
    POSTPROCESSING_VARIANTS,
    SUITE_SHAPE,
    SUITE_TRAINER_SUFFIX,
    TIME_BUDGET_SECONDS,
    DemoOptions,
    _trainer_schedule,
    anatomical_mirror_axes,
    dataset_folder_name,
    demo_data,
    demo_settings,
    optimizer_description,
    phantom_spacing,
    trained_mirror_axes,
)
from nnunet_shape.errors import UserError

#: what ``python -m nnunet_shape.demo`` runs; the settings, console and report helpers it uses are
#: importable from here too (tests and tests/e2e_helpers.py use ``nnunet_environment``)
__all__ = [
    "DemoResult",
    "keep_largest_component_per_label",
    "postprocess_folder",
    "decide_postprocessing",
    "compartment_counts",
    "run_demo",
    "run_demo_seeds",
    "MultiSeedResult",
    "training_environment",
    "make_phantoms_and_plan",
    "write_demo_dataset",
    "build_parser",
    "options_from_command_line",
    "main",
    "DemoOptions",
    "StageFailed",
    "nnunet_environment",
    "anatomical_mirror_axes",
    "optimizer_description",
]

# ------------------------------------------------------------------------------------------------
# postprocessing
# ------------------------------------------------------------------------------------------------

def keep_largest_component_per_label(segmentation: Any, labels: Sequence[int]) -> Any:
    """Keep only the largest connected component of every label in ``labels`` (nnU-Net's rule:
    full connectivity, ties keep all maximal components); removed voxels become background.

    The steps of :func:`nnunet_shape.nnunet.postprocessing.largest_component_steps`, applied as
    ``nnunet-shape apply-postprocessing`` applies them; a new array, the input is untouched.
    """
    import numpy as np
    import torch

    from nnunet_shape.core.connected_components import postprocess_logits_argmax
    from nnunet_shape.nnunet.postprocessing import largest_component_steps

    tensor = torch.from_numpy(np.ascontiguousarray(segmentation))
    return postprocess_logits_argmax(tensor, *largest_component_steps([int(label) for label in labels])).numpy()


def postprocess_folder(input_folder: str | os.PathLike, output_folder: str | os.PathLike,
                       labels: Sequence[int], file_ending: str = ".nii.gz",
                       on_case: Callable[[str], None] | None = None,
                       steps: tuple[Sequence[Callable], Sequence[dict]] | None = None) -> list[Path]:
    """:func:`keep_largest_component_per_label` on every ``*file_ending`` of ``input_folder``,
    written with the same geometry to ``output_folder`` (nnU-Net's SimpleITK reader/writer), by
    ``nnunet-shape apply-postprocessing``'s code. Returns the written files.

    ``steps``: ``(pp_fns, pp_fn_kwargs)`` of a ``postprocessing.pkl`` to apply instead (e.g. the
    decision of :func:`decide_postprocessing`); ``labels`` is then unused.
    """
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_shape.nnunet.postprocessing import apply_postprocessing_to_files, largest_component_steps

    input_folder = Path(input_folder)
    names = sorted(p.name for p in input_folder.iterdir() if p.name.endswith(file_ending))
    if not names:
        raise FileNotFoundError(f"postprocess_folder: no '*{file_ending}' in {input_folder}")
    pp_fns, pp_fn_kwargs = steps if steps is not None else largest_component_steps([int(label) for label in labels])
    written = apply_postprocessing_to_files(input_folder, output_folder, names, SimpleITKIO(), pp_fns, pp_fn_kwargs,
                                            device="cpu", num_io_threads=1, on_case=on_case)
    return [Path(path) for path in written]


def decide_postprocessing(validation_folder: Path, reference_folder: Path, model_folder: Path, output_folder: Path,
                          log_file: Path) -> tuple[list[Callable], list[dict], list[dict]]:
    """nnU-Net's postprocessing decision for one model, on its fold's validation predictions
    (``nnunet-shape determine-postprocessing -i fold_X/validation -ref gt_segmentations``).

    ``model_folder`` holds the model's plans.json and dataset.json. nnU-Net's and the decision's
    output goes to ``log_file``; ``postprocessing.pkl`` and ``postprocessing.json`` are written into
    ``validation_folder`` and copied to ``output_folder``. Returns ``(pp_fns, pp_fn_kwargs,
    decisions)``, decisions as in ``postprocessing.json`` (the rule and numbers per label).
    """
    from contextlib import redirect_stdout

    from nnunet_shape.nnunet.postprocessing import determine_postprocessing_on_device

    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as log, redirect_stdout(log):
        print(f"$ nnunet-shape determine-postprocessing -i {validation_folder} -ref {reference_folder} "
              f"-plans_json {model_folder / 'plans.json'} -dataset_json {model_folder / 'dataset.json'} "
              f"-device cpu --remove_postprocessed")
        pp_fns, pp_fn_kwargs = determine_postprocessing_on_device(
            str(validation_folder), str(reference_folder), str(model_folder / "plans.json"),
            str(model_folder / "dataset.json"), device="cpu", keep_postprocessed_files=False, num_io_threads=1)
    output_folder.mkdir(parents=True, exist_ok=True)
    for name in ("postprocessing.pkl", "postprocessing.json"):
        shutil.copyfile(validation_folder / name, output_folder / name)
    decisions = _read_json(validation_folder / "postprocessing.json")["decisions"]
    return pp_fns, pp_fn_kwargs, decisions


def compartment_counts(reference_folder: Path, prediction_folder: Path, cases: Sequence[str], file_ending: str,
                       labels: Sequence[int]) -> dict[int, list[tuple[int, int]]]:
    """For every label with more than one connected component in some reference (the phantoms'
    tibial cartilage): per case, :func:`nnunet_shape.demo.report.compartments_found` of the
    prediction. Labels whose references are all one piece are left out."""
    import SimpleITK as sitk

    def read(path: Path):
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))

    counts: dict[int, list[tuple[int, int]]] = {label: [] for label in labels}
    for case in cases:
        reference = read(reference_folder / f"{case}{file_ending}")
        prediction = read(prediction_folder / f"{case}{file_ending}")
        for label in labels:
            counts[label].append(compartments_found(reference == label, prediction == label))
    return {label: found for label, found in counts.items() if any(total > 1 for _, total in found)}


# ------------------------------------------------------------------------------------------------
# the pipeline
# ------------------------------------------------------------------------------------------------

@dataclass
class DemoResult:
    """Paths and numbers of one demo run."""

    output: Path
    rows: list[TableRow]
    avg_dice: dict[str, float]
    chance_avg: float
    ordering_holds: bool
    above_chance: bool
    verdict: str
    stages: list[StageRecord]
    total_seconds: float
    report: Path
    table_csv: Path
    overlays: list[Path] = field(default_factory=list)


def _prepare_output(output: Path, skip_training: bool) -> None:
    """Refuse to write into a non-empty folder that an earlier demo did not create; on a fresh
    run remove the previous run's work folder (nnU-Net would mix old and new results)."""
    if output.exists() and any(output.iterdir()) and not (output / MARKER_FILE).exists():
        raise StageFailed(f"{output} is not empty and was not written by the demo "
                          f"(no {MARKER_FILE}); choose another --output")
    output.mkdir(parents=True, exist_ok=True)
    (output / MARKER_FILE).write_text("written by python -m nnunet_shape.demo\n")
    if not skip_training:
        for name in ("work", "predictions", "evaluation", "curves", "overlays", "logs"):
            shutil.rmtree(output / name, ignore_errors=True)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def training_environment(work: Path, options: DemoOptions) -> dict[str, str]:
    """nnU-Net's environment for ``nnUNetv2_train`` in a demo: ``nnUNet_n_proc_DA`` and the
    training seed (``nnUNetShape_seed``: with in-process augmentation a rerun repeats its numbers)."""
    from nnunet_shape.nnunet.training.whole_scan import SEED_ENV

    env = nnunet_environment(work, options.n_proc_da)
    env[SEED_ENV] = str(int(options.training_seed))
    return env


def grid_words(options: DemoOptions) -> str:
    """The grid of the run's data in words: the phantoms' shape, or the brains' voxel size."""
    return str(options.shape) if demo_data(options).key == "knee" else f"{options.spacing_mm:g} mm voxels"


def write_demo_dataset(options: DemoOptions, raw_root: Path) -> Path:
    """The run's data set (:func:`~nnunet_shape.demo.settings.demo_data`) written into
    ``raw_root`` as ``Dataset<id>_<name>``: the knee phantoms on ``options.shape`` (the generator's
    field of view kept), or the brains at ``options.spacing_mm``. Returns the dataset folder."""
    data = demo_data(options)
    common = dict(n_train=options.n_train, n_test=options.n_test, seed=options.seed, dataset_id=options.dataset_id,
                  name=data.dataset_name, num_processes=max(1, options.num_processes))
    if data.key == "knee":
        from nnunet_shape.demo.phantoms import write_phantom_dataset

        return write_phantom_dataset(raw_root, shape=options.shape, spacing=phantom_spacing(options.shape), **common)
    from nnunet_shape.demo.brains import write_brain_dataset

    return write_brain_dataset(raw_root, spacing_mm=options.spacing_mm, hemispheres=options.hemispheres, **common)


def make_phantoms_and_plan(options: DemoOptions, work: Path, logs: Path, stages: Stages) -> None:
    """Stages 1 and 2 of every demo run: the data set in ``work/nnUNet_raw`` (knee phantoms, or
    brains with ``--data brain``: :func:`write_demo_dataset`) and ``nnUNetv2_plan_and_preprocess``
    (3d_fullres, dataset integrity verified)."""
    with stages.stage(demo_data(options).generator, 1, "dataset") as bar:
        bar.set_postfix_str(f"{options.n_train} train + {options.n_test} test, {grid_words(options)}")
        write_demo_dataset(options, work / "nnUNet_raw")
        bar.update(1)
    with stages.stage("nnUNetv2_plan_and_preprocess", 2 * options.n_train, "case") as bar:
        stream_command(
            [console_script("nnUNetv2_plan_and_preprocess"), "-d", str(options.dataset_id),
             "-c", CONFIGURATION, "-npfp", str(options.num_processes), "-np", str(options.num_processes),
             "--verify_dataset_integrity"],
            nnunet_environment(work), logs / "plan_and_preprocess.log", line_handler(bar, stages.echo, "plan"),
            "nnUNetv2_plan_and_preprocess")


def run_demo(options: DemoOptions) -> DemoResult:
    """Run every stage (see the module docstring) and write the report; returns its numbers."""
    data = demo_data(options)
    settings = demo_settings(options.image_aware)
    output = Path(options.output).resolve()
    _prepare_output(output, options.skip_training)
    work = output / "work"
    logs = output / "logs"
    raw_dataset = work / "nnUNet_raw" / dataset_folder_name(options.dataset_id, data)
    results_dataset = work / "nnUNet_results" / dataset_folder_name(options.dataset_id, data)
    env_plan = nnunet_environment(work)
    env_train = training_environment(work, options)
    trainers = {s.slug: s.trainer + options.trainer_suffix for s in settings}
    schedules = {slug: _trainer_schedule(trainer) for slug, trainer in trainers.items()}
    n_stages = 2 + 2 * len(settings) + 4
    stages = Stages(n_stages, fancy=options.progress and sys.stdout.isatty())
    echo = stages.echo
    echo(f"Table 1 on {data.title}: {', '.join(s.title for s in settings)} ({raw_dataset.name})")

    def trained_folder(slug: str) -> Path:
        return results_dataset / f"{trainers[slug]}__nnUNetPlans__{CONFIGURATION}" / f"fold_{options.fold}"

    # 1 + 2: data and nnU-Net planning
    if options.skip_training:
        missing = [str(trained_folder(s.slug) / "checkpoint_final.pth") for s in settings
                   if not (trained_folder(s.slug) / "checkpoint_final.pth").is_file()]
        if missing or not (raw_dataset / "dataset.json").is_file():
            raise StageFailed("--skip-training: nothing to reuse; missing "
                              + ", ".join(missing or [str(raw_dataset / "dataset.json")]))
        stages.skipped(data.generator, f"reused {raw_dataset}")
        stages.skipped("nnUNetv2_plan_and_preprocess", "reused")
    else:
        make_phantoms_and_plan(options, work, logs, stages)

    # 3: training, mirrored only along anatomically possible axes (unless --mirror-si)
    if not options.mirror_si:
        from nnunet_shape.nnunet.training.whole_scan import MIRROR_AXES_ENV

        plans = _read_json(work / "nnUNet_preprocessed" / dataset_folder_name(options.dataset_id, data)
                           / "nnUNetPlans.json")
        env_train[MIRROR_AXES_ENV] = ",".join(str(a) for a in anatomical_mirror_axes(plans["transpose_forward"],
                                                                                    data)) or "none"
    for setting in settings:
        trainer = trainers[setting.slug]
        name = f"nnUNetv2_train {setting.title}"
        if options.skip_training:
            stages.skipped(name, f"reused {trained_folder(setting.slug)}")
            continue
        epochs = schedules[setting.slug][0]
        with stages.stage(name, epochs, "epoch") as bar:
            stream_command(
                [console_script("nnUNetv2_train"), str(options.dataset_id), CONFIGURATION, options.fold,
                 "-tr", trainer, "-device", options.device],
                env_train, logs / f"train_{setting.slug}.log", line_handler(bar, echo, "train"), name)

    # 4: prediction of the test cases
    predictions = output / "predictions"
    test_images = sorted((raw_dataset / "imagesTs").glob("*_0000.*"))
    for setting in settings:
        name = f"nnUNetv2_predict {setting.title}"
        with stages.stage(name, len(test_images), "case") as bar:
            # -npp 0 -nps 0: nnU-Net's sequential mode, no worker processes to spawn (5 s less per call
            # for a few small cases on 2 CPU cores)
            command = [console_script("nnUNetv2_predict"), "-i", str(raw_dataset / "imagesTs"),
                       "-o", str(predictions / setting.slug / "raw"), "-d", str(options.dataset_id),
                       "-c", CONFIGURATION, "-f", options.fold, "-tr", trainers[setting.slug],
                       "-device", options.device, "-npp", "0", "-nps", "0"]
            if not options.tta:
                command.append("--disable_tta")
            shutil.rmtree(predictions / setting.slug / "raw", ignore_errors=True)
            stream_command(command, env_plan, logs / f"predict_{setting.slug}.log",
                           line_handler(bar, echo, "predict"), name)

    dataset_json = _read_json(raw_dataset / "dataset.json")
    labels = sorted(int(v) for k, v in dataset_json["labels"].items() if k not in ("background", "ignore"))
    class_names = {int(v): k for k, v in dataset_json["labels"].items() if int(v) in labels}
    file_ending = dataset_json["file_ending"]

    # 5: postprocessing: nnU-Net's decision on the fold's validation cases, and unconditionally
    test_cases = sorted(p.name[: -len(file_ending)] for p in (raw_dataset / "labelsTs").iterdir()
                        if p.name.endswith(file_ending))
    gt_segmentations = work / "nnUNet_preprocessed" / raw_dataset.name / "gt_segmentations"
    from nnunet_shape.nnunet.postprocessing import decision_lines

    decisions: dict[str, list[dict]] = {}
    with stages.stage("postprocessing (decided on validation)", len(settings) * (1 + 2 * len(test_cases)),
                      "step") as bar:
        for setting in settings:
            folder = trained_folder(setting.slug)
            *steps, decisions[setting.slug] = decide_postprocessing(
                folder / "validation", gt_segmentations, folder.parent, output / "postprocessing" / setting.slug,
                logs / f"postprocessing_{setting.slug}.log")
            bar.update(1)
            for line in decision_lines(decisions[setting.slug]):
                echo(f"{setting.title}: {line}")
            postprocess_folder(predictions / setting.slug / "raw", predictions / setting.slug / "chosen", labels,
                               file_ending, on_case=lambda _: bar.update(1), steps=tuple(steps))
            postprocess_folder(predictions / setting.slug / "raw", predictions / setting.slug / "largest_component",
                               labels, file_ending, on_case=lambda _: bar.update(1))

    # 6: evaluation
    from nnunet_shape.nnunet.baselines import write_baseline_predictions
    from nnunet_shape.nnunet.evaluate import evaluate_folder

    baseline_summaries: dict[str, dict] = {}
    with stages.stage("no-image baselines (atlas, descriptor ellipsoids)", 2, "baseline") as bar:
        written = write_baseline_predictions(
            dataset_json, sorted((raw_dataset / "labelsTr").glob(f"*{file_ending}")),
            sorted((raw_dataset / "imagesTs").glob(f"*_0000{file_ending}")), predictions / "baselines")
        for name, folder in written.items():
            baseline_summaries[name] = evaluate_folder(raw_dataset / "labelsTs", folder, dataset_json,
                                                       output_dir=output / "evaluation" / "baselines" / name,
                                                       num_processes=1)
            bar.update(1)

    summaries: dict[tuple[str, str], dict] = {}
    with stages.stage("evaluation", len(settings) * len(POSTPROCESSING_VARIANTS), "folder") as bar:
        for setting in settings:
            for variant in POSTPROCESSING_VARIANTS:
                summaries[(setting.slug, variant)] = evaluate_folder(
                    raw_dataset / "labelsTs", predictions / setting.slug / variant, dataset_json,
                    output_dir=output / "evaluation" / setting.slug / variant, num_processes=1)
                bar.update(1)

    # 7: report
    with stages.stage("curves and overlays", len(test_cases) + 1, "file") as bar:
        curves = copy_curves(output, {s.slug: trained_folder(s.slug) for s in settings})
        bar.update(1)
        overlays = []
        for case in test_cases:
            overlays.append(case_overlay(output, raw_dataset, predictions, case, file_ending, class_names, settings,
                                         data))
            bar.update(1)
    case_shape = _case_shape(raw_dataset / "labelsTs" / (test_cases[0] + file_ending))
    rows = table_rows(summaries, settings, options.trainer_suffix, case_shape, len(labels))
    baselines = baseline_rows(baseline_summaries, case_shape, len(labels))
    table_csv = write_table_csv([*rows, *baselines], output / "table.csv")
    write_descriptor_errors_csv(summaries, settings, output / "descriptor_errors.csv")
    chance = chance_dice(summaries[(settings[0].slug, "raw")])
    chance_avg = sum(chance.values()) / len(chance)
    final = HEADLINE_POSTPROCESSING
    compartments = {s.slug: compartment_counts(raw_dataset / "labelsTs", predictions / s.slug / "raw", test_cases,
                                               file_ending, labels) for s in settings} if data.compartments else {}
    avg = {slug: float(summaries[(slug, final)]["foreground_mean"]["Dice"]) for slug in trainers}
    ordering, above, verdict = ordering_verdict(avg, chance_avg)
    against_baselines = baseline_verdict(avg, baselines)
    total = time.monotonic() - stages.start
    plans = _read_json(trained_folder(settings[0].slug).parent / "plans.json")
    dataset_parameters = _read_json(raw_dataset / data.parameters_file)
    mirror_axes = {s.slug: trained_mirror_axes(trained_folder(s.slug)) for s in settings}
    report = write_report(output, options, rows, summaries, chance, verdict, stages.records, total, schedules,
                          trainers, plans, curves, overlays, case_shape, dataset_parameters, labels, mirror_axes,
                          decisions, compartments, baselines, against_baselines, settings=settings, data=data)
    echo("")
    echo(format_dice_table(rows, final, chance, baselines))
    echo(verdict)
    echo(f"against the no-image baselines: {against_baselines}")
    echo(f"demo on {data.title} finished in {total / 60:.1f} min (budget {TIME_BUDGET_SECONDS / 60:.0f} min); "
         f"report: {report}")
    return DemoResult(output=output, rows=rows, avg_dice=avg, chance_avg=chance_avg, ordering_holds=ordering,
                      above_chance=above, verdict=verdict, stages=stages.records, total_seconds=total,
                      report=report, table_csv=table_csv, overlays=overlays)


@dataclass
class MultiSeedResult:
    """``--seeds N``: one :class:`DemoResult` per training seed and the summary report."""

    output: Path
    results: dict[int, DemoResult]
    ordering_holds: dict[int, bool]
    report: Path
    table_csv: Path


def run_demo_seeds(options: DemoOptions) -> MultiSeedResult:
    """Table 1 with ``options.seeds`` training seeds (``training_seed`` … ``training_seed + N - 1``):
    every seed a full demo run in ``OUTPUT/seed_<s>`` (same data, same schedule), then
    ``OUTPUT/report.md`` with mean ± std across seeds and whether the expected ordering (paper 000's,
    with ``--image-aware`` the image terms between full supervision and V+C+D) holds in each seed,
    and ``OUTPUT/table_seeds.csv``."""
    import csv
    from dataclasses import replace

    from nnunet_shape.demo.report import format_multi_seed_table, ordering_text

    data = demo_data(options)
    output = Path(options.output).resolve()
    _prepare_output(output, options.skip_training)
    seeds = [options.training_seed + k for k in range(options.seeds)]
    results: dict[int, DemoResult] = {}
    for seed in seeds:
        print(f"=== training seed {seed} ({seeds.index(seed) + 1}/{len(seeds)}) ===", flush=True)
        results[seed] = run_demo(replace(options, output=output / f"seed_{seed}", training_seed=seed, seeds=1))
    rows_by_seed = {seed: result.rows for seed, result in results.items()}
    ordering = {seed: result.ordering_holds for seed, result in results.items()}
    table = format_multi_seed_table(rows_by_seed, HEADLINE_POSTPROCESSING)
    held = sum(ordering.values())
    lines = [f"# Table 1 on {data.title} over {len(seeds)} training seeds", "",
             f"Training seeds {', '.join(map(str, seeds))} (`nnUNetShape_seed`), {data.seed_name} seed {options.seed}, "
             f"`{options.trainer_suffix}` schedule; test-set Dice % after the postprocessing chosen on each model's "
             f"validation cases. Per seed: [report](seed_<s>/report.md).", "", table,
             f"Ordering {ordering_text([s.slug for s in demo_settings(options.image_aware)])} holds in "
             f"{held}/{len(seeds)} seeds: "
             + ", ".join(f"seed {s} {'yes' if ordering[s] else 'no'}" for s in seeds) + ".", "",
             "Total wall time: " + f"{sum(r.total_seconds for r in results.values()) / 60:.1f} min.", ""]
    report = output / "report.md"
    report.write_text("\n".join(lines))
    table_csv = output / "table_seeds.csv"
    with open(table_csv, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["training_seed", "setting", "postprocessing", "avg_dice", "ordering_holds"])
        for seed in seeds:
            for row in results[seed].rows:
                writer.writerow([seed, row.setting, row.postprocessing, row.avg_dice, ordering[seed]])
    print(table + f"ordering holds in {held}/{len(seeds)} seeds; report: {report}", flush=True)
    return MultiSeedResult(output, results, ordering, report, table_csv)


def _case_shape(path: Path) -> tuple[int, ...]:
    import SimpleITK as sitk

    return tuple(int(s) for s in reversed(sitk.ReadImage(str(path)).GetSize()))

# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------

#: what ``--data`` refuses: (data, option) -> why the option has no meaning for that data set
REFUSED_OPTIONS: dict[tuple[str, str], str] = {
    ("brain", "--shape"): "the brains' grid follows from --spacing MM (isotropic voxels over the template's field of "
                          "view)",
    ("brain", "--mirror-si"): "the brains are mirrored left-right only (and not at all with --hemispheres): mirrored "
                              "top-bottom or front-back they are no brains",
    ("knee", "--spacing"): "the phantoms' spacing follows from --shape Z Y X (it keeps the generator's field of view)",
    ("knee", "--hemispheres"): "the hemispheres split the brains' classes (--data brain)",
}


def build_parser() -> argparse.ArgumentParser:
    from nnunet_shape.demo.brains import DEFAULT_SPACING_MM

    parser = argparse.ArgumentParser(
        prog="python -m nnunet_shape.demo",
        description="Paper 000's Table 1 in miniature on knee phantoms (or, with --data brain, on real brain MRI "
                    "anatomy): full supervision vs V+C vs V+C+D (with --image-aware also V+C+D + image terms), "
                    "trained, predicted and evaluated with nnU-Net's console scripts on a CPU.")
    parser.add_argument("--output", "-o", type=Path, default=None,
                        help=f"output folder (default {KNEE.default_output}, {BRAIN.default_output} for --data brain, "
                             f"{BRAIN_HEMISPHERES.default_output} with --hemispheres, demo_weak_output for --suite "
                             "weak, demo_priors_output for --suite priors); its work/ subfolder holds nnU-Net's data")
    parser.add_argument("--suite", choices=("table1", "weak", "priors"), default="table1",
                        help="table1 (default): paper 000's Table 1; weak: full supervision, sparse slices, Weak-Net "
                             "and descriptors against annotation effort (make demo-weak); priors: population priors "
                             "and bounds from clicks (make demo-priors); each next to the no-image baselines")
    parser.add_argument("--data", choices=tuple(DEMO_DATA), default="knee",
                        help="knee (default): synthetic knee phantoms (nnunet-shape phantoms); brain: real brain MRI "
                             "anatomy, deformed copies of the MNI152 template that nilearn ships, gray and white "
                             "matter (nnunet-shape brains; docs/real-anatomy.md; table1 suite only)")
    parser.add_argument("--n-train", type=int, default=20, help="training cases (default 20)")
    parser.add_argument("--n-test", type=int, default=5, help="test cases (default 5)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                        help="knee phantom grid; the spacing keeps the default field of view "
                             f"(default {' '.join(map(str, DEFAULT_SHAPE))}, for the weak and priors suites "
                             f"{' '.join(map(str, SUITE_SHAPE))}; --data knee only)")
    parser.add_argument("--spacing", type=float, default=None, metavar="MM",
                        help=f"isotropic brain voxel size in mm (default {DEFAULT_SPACING_MM:g}: 40 x 47 x 38 voxels; "
                             "--data brain only)")
    parser.add_argument("--hemispheres", action="store_true",
                        help="four brain classes: gray/white matter x the patient's left/right hemisphere, never "
                             f"mirrored (dataset {BRAIN_HEMISPHERES.default_dataset_id}; --data brain only)")
    parser.add_argument("--image-aware", action="store_true",
                        help="add the row V+C+D + image terms (nnUNetTrainerShapeDescriptorsImageAware, same "
                             "schedule); the ordering checked becomes full supervision > V+C+D + image terms > V+C+D "
                             "> V+C (table1 suite only)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed of the phantoms or brains (default 0)")
    parser.add_argument("--trainer-suffix", default=None,
                        help=f"training-length variant of all trainers (default {DEFAULT_TRAINER_SUFFIX}, for the weak "
                             f"and priors suites {SUITE_TRAINER_SUFFIX}; _debug for a smoke run)")
    parser.add_argument("--recon-row", action="store_true",
                        help="weak suite: add the row V+C+D + reconstruction (nnUNetTrainerShapeDescriptorsRecon, "
                             "Weak-Net's reconstruction branch on the descriptor row; beyond paper 003)")
    parser.add_argument("--device", default="cpu", help="nnU-Net -device: cpu, cuda or mps (default cpu)")
    parser.add_argument("--skip-training", action="store_true",
                        help="reuse OUTPUT/work (data set, plans, trained models); predict, evaluate, report")
    parser.add_argument("--fold", default=DEFAULT_FOLD,
                        help="nnU-Net fold (default 0: 4/5 of the training cases, validation on the rest; "
                             "'all' trains on every case but validates on all of them, 8x mirrored)")
    parser.add_argument("--dataset-id", type=int, default=None,
                        help=f"dataset id (default {KNEE.default_dataset_id}; {BRAIN.default_dataset_id} for --data "
                             f"brain, {BRAIN_HEMISPHERES.default_dataset_id} with --hemispheres)")
    parser.add_argument("--tta", action="store_true", help="mirroring test-time augmentation in nnUNetv2_predict")
    parser.add_argument("--mirror-si", action="store_true",
                        help="also mirror along the superior-inferior axis, as nnU-Net does by default (puts the "
                             "tibia above the femur; default: medial-lateral and anterior-posterior only; --data knee "
                             "only)")
    parser.add_argument("--n-proc-da", type=int, default=0,
                        help="nnUNet_n_proc_DA for training (default 0: augmentation in the training process)")
    parser.add_argument("--num-processes", type=int, default=2,
                        help="worker processes for the data set and planning (default 2)")
    parser.add_argument("--training-seed", type=int, default=0,
                        help="nnUNetShape_seed of every training (default 0; with --seeds N the first of N)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="train every row with N consecutive training seeds and report mean ± std across "
                             "seeds and the ordering per seed (table1 suite only; default 1)")
    parser.add_argument("--no-progress", action="store_true",
                        help="plain progress lines instead of tqdm bars (the default when stdout is not a terminal)")
    return parser


def options_from_command_line(argv: Sequence[str]) -> tuple[DemoOptions, str]:
    """``(options, suite)`` of ``python -m nnunet_shape.demo ARGV``; a combination the demo refuses
    is a UserError naming the options (argparse's own errors exit as argparse does). With
    ``--data brain`` the template files are located first, so a missing nilearn stops here."""
    from dataclasses import replace

    from nnunet_shape.demo import brains
    from nnunet_shape.demo.suites import default_output

    args = build_parser().parse_args(list(argv))
    if args.n_train < 1 or args.n_test < 1:
        raise UserError("need --n-train >= 1 and --n-test >= 1")
    if args.fold != "all" and args.n_train < 5:
        raise UserError(f"fold {args.fold} needs nnU-Net's 5-fold split, i.e. --n-train >= 5 (or --fold all)")
    if args.seeds < 1 or (args.seeds > 1 and args.suite != "table1"):
        raise UserError(f"--seeds must be >= 1 and is for --suite table1 only; got --seeds {args.seeds} with --suite "
                        f"{args.suite}")
    table1_only = [option for option, given in (("--data brain", args.data != "knee"),
                                                ("--image-aware", args.image_aware)) if given]
    if args.suite != "table1" and table1_only:
        raise UserError(f"{' and '.join(table1_only)}: for --suite table1 only (the {args.suite} suite runs on the "
                        "knee phantoms with its own rows)")
    if args.recon_row and args.suite != "weak":
        raise UserError(f"--recon-row: for --suite weak only, not --suite {args.suite}")
    given = {"--shape": args.shape is not None, "--spacing": args.spacing is not None,
             "--hemispheres": args.hemispheres, "--mirror-si": args.mirror_si}
    refused = [f"{option} ({REFUSED_OPTIONS[(args.data, option)]})" for option, on in given.items()
               if on and (args.data, option) in REFUSED_OPTIONS]
    if refused:
        raise UserError(f"--data {args.data} does not take " + "; ".join(refused))
    if args.data == "brain":
        brains.check_spacing(args.spacing if args.spacing is not None else brains.DEFAULT_SPACING_MM, "--spacing")
        brains.template_files()  # nilearn and its template files, before anything is written
    options = DemoOptions(
        output=Path("."), n_train=args.n_train, n_test=args.n_test,
        shape=tuple(args.shape) if args.shape is not None
        else (DEFAULT_SHAPE if args.suite == "table1" else SUITE_SHAPE),
        seed=args.seed,
        trainer_suffix=args.trainer_suffix if args.trainer_suffix is not None
        else (DEFAULT_TRAINER_SUFFIX if args.suite == "table1" else SUITE_TRAINER_SUFFIX), device=args.device,
        skip_training=args.skip_training, fold=args.fold,
        tta=args.tta, n_proc_da=args.n_proc_da, num_processes=max(1, args.num_processes),
        progress=not args.no_progress, mirror_si=args.mirror_si, training_seed=args.training_seed, seeds=args.seeds,
        data=args.data, hemispheres=args.hemispheres,
        spacing_mm=args.spacing if args.spacing is not None else brains.DEFAULT_SPACING_MM,
        image_aware=args.image_aware, recon_row=args.recon_row)
    data = demo_data(options)
    output = args.output or (Path(data.default_output) if args.suite == "table1" else default_output(args.suite))
    dataset_id = args.dataset_id if args.dataset_id is not None else data.default_dataset_id
    return replace(options, output=output, dataset_id=dataset_id), args.suite


def main(argv: Sequence[str] | None = None) -> int:
    from nnunet_shape.demo.suites import run_suite

    try:
        options, suite = options_from_command_line(sys.argv[1:] if argv is None else argv)
    except UserError as error:
        print(error, file=sys.stderr)
        return 2
    try:
        if suite == "table1":
            run_demo_seeds(options) if options.seeds > 1 else run_demo(options)
        else:
            run_suite(options, suite)
    except StageFailed as error:
        print(f"\n{error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
