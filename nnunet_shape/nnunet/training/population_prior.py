"""Training from one population prior file: no per-case values, no voxel labels (issue 16).

``nnUNetTrainerShapePopulationPrior`` reads ``nnUNet_raw/<dataset>/population_prior.json`` (or
the file named by the environment variable ``nnUNetShape_population_prior``; format:
docs/population-priors.md) and trains every case against it, through the label-free path of
``nnUNetTrainerShapeDescriptorsFromFile`` (placeholder labels, label arrays never opened).

Per case (cached):

1. :func:`~nnunet_shape.descriptor_files.population_prior.case_constraints` maps the prior
   into the case's RAW array frame, from the direction, shape and spacing that nnU-Net stored
   in the preprocessed properties (``.pkl``: ``sitk_stuff`` / ``nibabel_stuff``,
   ``shape_before_cropping`` -- stored after nnU-Net's transpose, so transposed back --,
   ``spacing``); every case is mapped once at the start of training;
2. :meth:`CaseConstraints.preprocessed` moves it into the preprocessed frame (transpose,
   crop, resample).

Per sample: the per-class bounds go through the augmentation exactly like FromFile's per-case
targets (``_targets_for_case`` is the one override). The relations follow the linear part
``A`` of the same physical affine (:func:`relations_after_affine`): a centroid offset is a
vector, so its box becomes the bounding box of ``A box`` (the interval arithmetic of
:mod:`nnunet_shape.core.geometry`, exact for mirrors, transposes and axis scalings, looser
under rotation); volume ratios are invariant (``|det A|`` cancels); spread ratios and nested
centroids are per-axis statements and follow a scaled signed permutation exactly, but have no
per-axis meaning after a rotation, so they are **dropped for that sample** (logged once).

Checkpoints are selected by descriptor satisfaction on validation, like every descriptor
trainer, with the relations counted as one more entry (``satisfied_relations``). The final
validation writes ``validation/prior_satisfaction.json``: per validation case, whether the
prediction satisfies each per-class descriptor bound and each relation of the prior.

``nnUNetTrainerShapePopulationPriorImageAware`` adds the image-aware terms with the weights of
``nnUNetTrainerShapeDescriptorsImageAware`` (its class attributes, referenced).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.distributed as dist
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.paths import nnUNet_raw
from nnunetv2.utilities.collate_outputs import collate_outputs

from nnunet_shape.core.bounds import DescriptorBounds
from nnunet_shape.core.geometry import clean_round_off, interval_linear, monomial_parts, physical_affine
from nnunet_shape.core.intensity import intensity_values
from nnunet_shape.core.priors import PriorContext, PriorPenalty
from nnunet_shape.core.relations import (
    CentroidOffset,
    DescriptorRatio,
    IntensityOrder,
    NestedCentroid,
    Relation,
    relation_kind,
    relation_penalties,
)
from nnunet_shape.descriptor_files.measure import geometry_from_properties
from nnunet_shape.descriptor_files.population_prior import (
    POPULATION_PRIOR_FILE_NAME,
    CaseConstraints,
    PopulationPrior,
    case_constraints,
    load_population_prior,
)
from nnunet_shape.nnunet.training.from_file import (
    Targets,
    nnUNetTrainerShapeDescriptorsFromFile,
    sample_index_map,
)
from nnunet_shape.nnunet.training.shape_trainers import (
    HARD_PREFIX,
    SOFT_PREFIX,
    nnUNetTrainerShapeDescriptorsImageAware,
)
from nnunet_shape.nnunet.training.variants import (
    DebugSchedule,
    DemoSchedule,
    Schedule5Epochs,
    Schedule50Epochs,
    Schedule250Epochs,
    SuiteSchedule,
    trainer_names,
)
from nnunet_shape.nnunet.training.whole_scan import load_preprocessed_image

#: environment variable naming the population prior file (default: nnUNet_raw/<dataset>/population_prior.json)
POPULATION_PRIOR_ENV = "nnUNetShape_population_prior"
#: logger / satisfaction key of the relations
RELATIONS_KEY = "relations"


def population_prior_file(dataset_name: str) -> str:
    """Where the population prior of ``dataset_name`` is read from."""
    if os.environ.get(POPULATION_PRIOR_ENV):
        return os.environ[POPULATION_PRIOR_ENV]
    return join(nnUNet_raw.require(), dataset_name, POPULATION_PRIOR_FILE_NAME)


# ---------------------------------------------------------------------------------------
# relations under the augmentation
# ---------------------------------------------------------------------------------------


def relations_after_affine(relations: Sequence[Relation], matrix: np.ndarray) -> tuple[Relation | None, ...]:
    """The relations of a case after the content moved by ``Y = A X + b`` (``matrix`` = A, (3, 3)).

    * :class:`CentroidOffset`: offsets are vectors (``b`` cancels): the box becomes the
      bounding box of ``A box`` (interval arithmetic; unbounded sides only reach the axes that
      mix them in).
    * :class:`DescriptorRatio` of volume: unchanged (``|det A|`` cancels).
    * spread :class:`DescriptorRatio`, :class:`NestedCentroid`: under a scaled signed
      permutation ``Y_i = a_i X_pi(i)`` they are the same statements with permuted axes
      (both sides scale by ``|a_i|``); otherwise (rotation) None: no per-axis statement holds.
    * :class:`IntensityOrder`: unchanged (class means of the image have no axis).
    """
    a = clean_round_off(np.asarray(matrix, dtype=np.float64))
    monomial = monomial_parts(a)
    out: list[Relation | None] = []
    for relation in relations:
        if isinstance(relation, CentroidOffset):
            lo, hi = interval_linear(a, np.asarray([relation.low], dtype=np.float64),
                                      np.asarray([relation.high], dtype=np.float64), np.zeros(a.shape[0]))
            out.append(CentroidOffset(relation.class_from, relation.class_to, tuple(lo[0]), tuple(hi[0])))
        elif isinstance(relation, IntensityOrder) or (isinstance(relation, DescriptorRatio)
                                                       and relation.descriptor != "spread"):
            out.append(relation)
        elif monomial is None:
            out.append(None)
        elif isinstance(relation, DescriptorRatio):
            source = monomial[0]
            low, high = np.asarray(relation.low)[source], np.asarray(relation.high)[source]
            out.append(DescriptorRatio("spread", relation.numerator, relation.denominator, tuple(low), tuple(high)))
        elif isinstance(relation, NestedCentroid):
            out.append(relation)
        else:
            raise TypeError(f"relations_after_affine: unknown relation {relation!r}")
    return tuple(out)


def _identity(relation: Relation) -> tuple:
    """What a relation states apart from its bounds: its type and every other field."""
    return (type(relation), *(getattr(relation, f.name) for f in fields(relation) if f.name not in ("low", "high")))


@dataclass(frozen=True)
class PerSampleRelation:
    """One relation of the prior with its own bounds per sample of the batch (the loss's
    ``priors`` protocol). ``per_sample[b]`` is None where the relation was dropped for sample b.

    The samples' relations are one statement (same type, classes, descriptor) whose bounds
    differ only by each sample's augmentation."""

    name: str
    per_sample: tuple[Relation | None, ...]

    def __post_init__(self) -> None:
        kept = [r for r in self.per_sample if r is not None]
        for relation in kept[1:]:
            if _identity(relation) != _identity(kept[0]):
                raise ValueError(f"{self.name}: the samples' relations must state the same thing with other "
                                 f"bounds; got {kept[0]!r} and {relation!r}")

    @property
    def template(self) -> Relation | None:
        """The statement (the first sample's relation that was not dropped), None if dropped in all."""
        return next((r for r in self.per_sample if r is not None), None)

    @property
    def required_descriptors(self) -> tuple[str, ...]:
        return () if self.template is None else self.template.required_descriptors

    def penalty(self, ctx: PriorContext) -> PriorPenalty:
        return BatchRelations((self,)).penalties(ctx)[self.name]


@dataclass(frozen=True)
class BatchRelations:
    """Every relation of the prior for one batch, a group in the loss's ``priors``: the
    relations of one kind (all centroid offsets, all volume ratios, ...) are evaluated in one
    set of tensor operations over (B, R, M) bounds (:func:`~nnunet_shape.core.relations.relation_penalties`),
    not relation by relation nor sample by sample; a sample where a relation was dropped has no
    active term of it (benchmarks/prior_relations.py)."""

    relations: tuple[PerSampleRelation, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.relations)

    @property
    def required_descriptors(self) -> tuple[str, ...]:
        names: list[str] = []
        for relation in self.relations:
            names += [n for n in relation.required_descriptors if n not in names]
        return tuple(names)

    def penalties(self, ctx: PriorContext) -> dict[str, PriorPenalty]:
        batch = ctx.present.shape[0]
        groups: dict[tuple, list[PerSampleRelation]] = {}
        out: dict[str, PriorPenalty] = {}
        for relation in self.relations:
            if len(relation.per_sample) != batch:
                raise ValueError(f"{relation.name}: relations for {len(relation.per_sample)} samples, batch of {batch}")
            if relation.template is None:  # dropped in every sample: no terms
                dtype = ctx.values[next(iter(ctx.values))].dtype
                psi = torch.zeros(batch, 0, dtype=dtype, device=ctx.present.device)
                out[relation.name] = PriorPenalty(psi, psi.bool(), torch.ones_like(ctx.present),
                                                  torch.zeros_like(ctx.present))
            else:
                groups.setdefault(relation_kind(relation.template), []).append(relation)
        for kind, members in groups.items():
            templates = [m.template for m in members]
            bounds = None
            if kind[0] in (CentroidOffset, DescriptorRatio):  # bounds that each sample's augmentation moved
                like = ctx.values[templates[0].required_descriptors[0]]
                # a dropped sample keeps the statement's bounds: its terms are masked below
                rows = [[m.per_sample[b] or m.template for m in members] for b in range(batch)]
                bounds = (like.new_tensor([[r.low for r in row] for row in rows]),  # (B, R, M)
                          like.new_tensor([[r.high for r in row] for row in rows]))
            penalties = relation_penalties(templates, ctx, bounds)
            for member, pen in zip(members, penalties):
                if all(r is not None for r in member.per_sample):
                    out[member.name] = pen
                    continue
                kept = torch.tensor([r is not None for r in member.per_sample], device=pen.psi.device).unsqueeze(1)
                out[member.name] = PriorPenalty(torch.where(kept, pen.psi, torch.zeros_like(pen.psi)),
                                                pen.active & kept, pen.satisfied | ~kept, pen.involved & kept)
        return {name: out[name] for name in self.names}


def batch_relations(per_sample: Sequence[Sequence[Relation | None]]) -> BatchRelations:
    """``per_sample[b][r]`` (relation r of sample b) -> the :class:`BatchRelations` of one
    :class:`PerSampleRelation` per r, with unique names (two relations of one pair and type get
    an index suffix)."""
    if not per_sample:
        return BatchRelations(())
    count = len(per_sample[0])
    out, seen = [], set()
    for r in range(count):
        column = tuple(sample[r] for sample in per_sample)
        name = next((x.name for x in column if x is not None), f"relation_{r}")
        if name in seen:
            name = f"{name}__{r}"
        seen.add(name)
        out.append(PerSampleRelation(name, column))
    return BatchRelations(tuple(out))


def relation_codes(result, names: Sequence[str], num_classes: int) -> torch.Tensor:
    """(B, K) int8 codes of the relations ``names`` of a loss result, on its device: 1 every
    relation involving the class holds, 0 one is violated, -1 no relation involves it (the
    codes of the descriptor trainers)."""
    batch = next(iter(result.satisfied.values())).shape[0]
    involved = torch.zeros(batch, num_classes, dtype=torch.bool, device=result.loss.device)
    ok = torch.ones_like(involved)
    for name in names:
        act = result.active[name].bool()
        involved = involved | act
        ok = ok & (result.satisfied[name].bool() | ~act)
    return torch.where(involved, ok.to(torch.int8), torch.full_like(ok, -1, dtype=torch.int8))


# ---------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------


class nnUNetTrainerShapePopulationPrior(nnUNetTrainerShapeDescriptorsFromFile):
    """V+C+D bounds and relations from ONE population prior file: nothing per case, no labels."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._prior: PopulationPrior | None = None
        self._case_constraints: dict[str, CaseConstraints] = {}
        self._dropped_reported = False
        self._loss_results: list = []
        if self.intensity_weight:
            raise ValueError(f"{self.__class__.__name__}: intensity_weight must be 0: a population prior has no "
                             f"per-case intensities (state 'intensity_order' relations in the prior file instead)")

    def _uses_intensity(self) -> bool:
        """The prior's ``intensity_order`` relations need the class intensities of the image."""
        return any(spec.type == "intensity_order" for spec in self._load_prior().relations)

    def _descriptor_log_keys(self) -> list[str]:
        return [*super()._descriptor_log_keys(), SOFT_PREFIX + RELATIONS_KEY, HARD_PREFIX + RELATIONS_KEY]

    def _build_loss(self):
        loss = super()._build_loss()
        # the step's soft result (the loss module's forward); _hard_result adds the hard one
        loss.register_forward_hook(lambda module, args, output: self._loss_results.append(output))
        return loss

    def _hard_result(self, *args, **kwargs):
        # the hard prediction goes through the functional loss (no forward hook): keep its result
        # too, so that the relations' hard codes are the hard prediction's, not the soft output's
        result = super()._hard_result(*args, **kwargs)
        self._loss_results.append(result)
        return result

    # --------------------------------------------------------------------------- the prior
    def _load_prior(self) -> PopulationPrior:
        if self._prior is None:
            path = population_prior_file(self.plans_manager.dataset_name)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"{self.__class__.__name__}: no population prior {path} for dataset "
                    f"{self.plans_manager.dataset_name}; learn one with `nnunet-shape population-prior -d ...`, "
                    f"write one (docs/population-priors.md) or set {POPULATION_PRIOR_ENV}")
            self._prior = load_population_prior(path, self.dataset_json)
            self.print_to_log_file(f"population prior: {path} ({len(self._prior.classes)} classes, "
                                   f"{len(self._prior.relations)} relations)")
        return self._prior

    def _load_case_files(self) -> dict:
        raise RuntimeError(f"{self.__class__.__name__} has no per-case descriptor files; it trains from the "
                           f"population prior {population_prior_file(self.plans_manager.dataset_name)}")

    def check_descriptor_files(self) -> None:
        """At the start of training (FromFile's hook): load the prior and map it into EVERY case of
        the preprocessed dataset, so that a prior that does not fit a case (a class label beyond
        the network's outputs, an oblique direction for a per-axis range) fails before the first
        epoch, naming the file and the field."""
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        if self._uses_intensity():
            self.check_zscore_normalisation(
                f"the intensity_order relations of {population_prior_file(self.plans_manager.dataset_name)}")
        folder = self.preprocessed_dataset_folder
        for key in sorted(infer_dataset_class(folder).get_identifiers(folder)):
            self._constraints_for_case(key)

    def _constraints_for_case(self, key: str) -> CaseConstraints:
        """The prior in ``key``'s preprocessed frame (cached)."""
        if key not in self._case_constraints:
            prior = self._load_prior()
            data, properties = load_preprocessed_image(self.preprocessed_dataset_folder, key)
            # nnU-Net stores shape_before_cropping AFTER its transpose
            transposed = properties["shape_before_cropping"]
            raw_shape = tuple(int(transposed[axis]) for axis in self.plans_manager.transpose_backward)
            _, geometry = geometry_from_properties(properties, (1, *raw_shape))
            k = self.label_manager.num_segmentation_heads
            raw = case_constraints(prior, geometry.direction, raw_shape, properties["spacing"], num_classes=k)
            self._case_constraints[key] = raw.preprocessed(
                self.plans_manager.transpose_forward, properties["bbox_used_for_cropping"],
                properties["shape_after_cropping_and_before_resampling"], data.shape[1:])
        return self._case_constraints[key]

    def _targets_for_case(self, key: str) -> tuple[Targets, tuple[float, ...], tuple[int, ...]]:
        cc = self._constraints_for_case(key)
        return cc.targets, tuple(float(s) for s in cc.spacing), cc.shape

    def _loss_targets(self, batch: dict) -> tuple[DescriptorBounds, torch.Tensor]:
        """FromFile's bounds (the prior's per-class ranges moved like the image) and, as the
        loss's ``priors``, the prior's relations moved by each sample's augmentation."""
        bounds, spacing = super()._loss_targets(batch)
        patch_size = tuple(batch["data"].shape[2:])
        per_sample = []
        for key, records in zip(batch["keys"], batch["augmentation"]):
            cc = self._constraints_for_case(key)
            index_map = sample_index_map(cc.shape, batch["loader_patch_size"], patch_size, records)
            matrix, _ = physical_affine(index_map, cc.spacing, cc.spacing)
            moved = relations_after_affine(cc.relations, matrix)
            if any(r is None for r in moved) and not self._dropped_reported:
                self._dropped_reported = True
                self.print_to_log_file("population prior: a rotation was drawn; spread-ratio and nested-centroid "
                                       "relations have no per-axis meaning after it and are skipped for such "
                                       "samples (offsets and volume ratios are kept)")
            per_sample.append(moved)
        self.loss.priors = (batch_relations(per_sample),)
        return bounds, spacing

    # ----------------------------------------------------------------------- satisfaction
    def _descriptor_step(self, batch: dict):
        self._loss_results.clear()
        loss, output, satisfied = super()._descriptor_step(batch)
        soft, hard = self._loss_results[0], self._loss_results[-1]
        names = self.loss.priors[0].names
        k = self.label_manager.num_segmentation_heads
        satisfied[f"satisfied_{RELATIONS_KEY}"] = relation_codes(soft, names, k)
        satisfied[f"hard_satisfied_{RELATIONS_KEY}"] = relation_codes(hard, names, k)
        self._loss_results.clear()
        return loss, output, satisfied

    def _gathered_codes(self, outputs: list[dict]) -> dict[str, np.ndarray]:
        codes = super()._gathered_codes(outputs)
        collated = collate_outputs(outputs)
        relation_keys = {f"{prefix}{RELATIONS_KEY}": np.asarray(collated[f"{prefix}{RELATIONS_KEY}"])
                         for prefix in ("satisfied_", "hard_satisfied_")}
        if self.is_ddp:
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, relation_keys)
            relation_keys = {key: np.concatenate([np.asarray(rank[key]).reshape(-1, value.shape[-1])
                                                  for rank in gathered]) for key, value in relation_keys.items()}
        return {**codes, **relation_keys}

    def _satisfaction_per_class(self, outputs: dict, prefix: str = "satisfied_") -> dict[str, np.ndarray]:
        """The descriptors' fractions and one more entry, ``relations``: per class, the fraction
        of the cases with a relation involving it in which all of them held."""
        fractions = super()._satisfaction_per_class(outputs, prefix)
        codes = np.asarray(outputs[f"{prefix}{RELATIONS_KEY}"])
        codes = codes.reshape(-1, codes.shape[-1])[:, 1:]
        active = (codes >= 0).sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            fractions[RELATIONS_KEY] = np.where(active > 0, (codes == 1).sum(0) / np.maximum(active, 1), np.nan)
        return fractions

    def _print_descriptor_report(self) -> None:
        super()._print_descriptor_report()
        classes = self._classes_for_report()
        for prefix, what in ((SOFT_PREFIX, "val"), (HARD_PREFIX, "val, hard")):
            fractions = self.logger.get_value(f"{prefix}{RELATIONS_KEY}", step=self.current_epoch)
            cells = ", ".join(f"{c}: {f:.2f}" for c, f in zip(classes, fractions))
            self.print_to_log_file(f"prior relations satisfied ({what}) {cells}")

    # ------------------------------------------------------------------------ validation
    def perform_actual_validation(self, save_probabilities: bool = False):
        """Predict the validation cases and check the hard predictions against the prior:
        ``validation/prior_satisfaction.json`` (per case: per class and descriptor, and per
        relation, whether it holds), measured in the preprocessed frame of each case."""
        from nnunet_shape.core.losses import shape_descriptor_loss
        from nnunet_shape.descriptor_files.atomic import write_json_atomic

        self.set_deep_supervision_enabled(False)
        folder = join(self.output_folder, "validation")
        classes = ["background", *self._classes_for_report()]
        report: dict[str, dict] = {}
        for key, logits in self._predict_validation_cases(folder, save_probabilities):
            cc = self._constraints_for_case(key)
            hard = torch.nn.functional.one_hot(logits.float().argmax(0), logits.shape[0])
            hard = hard.movedim(-1, 0)[None].double()
            values = None
            if self._uses_intensity():  # the class means of the hard prediction in the image it was predicted on
                data, _ = load_preprocessed_image(self.preprocessed_dataset_folder, key)
                values = intensity_values(hard, torch.from_numpy(np.asarray(data[:], dtype=np.float64))[None])
            result = shape_descriptor_loss(hard, cc.bounds(torch.float64), torch.tensor(cc.spacing)[None],
                                           descriptors=self.descriptors, priors=cc.relations, values=values)
            row: dict[str, dict] = {}
            for name, ok in result.satisfied.items():
                active = result.active[name][0]
                row[name] = {classes[c]: bool(ok[0, c]) for c in range(len(classes)) if bool(active[c])}
            report[key] = row
        write_json_atomic(join(folder, "prior_satisfaction.json"),
                          {"prior": population_prior_file(self.plans_manager.dataset_name), "cases": report})
        for key, row in report.items():
            held = sum(v for r in row.values() for v in r.values())
            total = sum(len(r) for r in row.values())
            self.print_to_log_file(f"validation {key}: {held} / {total} prior constraints hold")
        self.set_deep_supervision_enabled(True)


class nnUNetTrainerShapePopulationPriorImageAware(nnUNetTrainerShapePopulationPrior):
    """The population prior (one file, no labels) plus the image-aware terms of
    ``nnUNetTrainerShapeDescriptorsImageAware`` with its weights (region homogeneity, edge-aware
    boundary, entropy; docs/method.md, "Image-aware terms"): the prior's ranges are wide, so the
    image decides the most among the segmentations that satisfy them. The weights are that class's
    attributes, not copies, so a change there is a change here."""

    homogeneity_weight = nnUNetTrainerShapeDescriptorsImageAware.homogeneity_weight
    edge_weight = nnUNetTrainerShapeDescriptorsImageAware.edge_weight
    edge_sigma = nnUNetTrainerShapeDescriptorsImageAware.edge_sigma
    entropy_weight = nnUNetTrainerShapeDescriptorsImageAware.entropy_weight


# training-length variants, nnU-Net style (schedules: nnunet_shape.nnunet.training.variants)
class nnUNetTrainerShapePopulationPrior_5epochs(Schedule5Epochs, nnUNetTrainerShapePopulationPrior): ...
class nnUNetTrainerShapePopulationPrior_50epochs(Schedule50Epochs, nnUNetTrainerShapePopulationPrior): ...
class nnUNetTrainerShapePopulationPrior_250epochs(Schedule250Epochs, nnUNetTrainerShapePopulationPrior): ...
class nnUNetTrainerShapePopulationPrior_demo(DemoSchedule, nnUNetTrainerShapePopulationPrior): ...
class nnUNetTrainerShapePopulationPrior_suite(SuiteSchedule, nnUNetTrainerShapePopulationPrior): ...
class nnUNetTrainerShapePopulationPrior_debug(DebugSchedule, nnUNetTrainerShapePopulationPrior): ...


class nnUNetTrainerShapePopulationPriorImageAware_5epochs(
        Schedule5Epochs, nnUNetTrainerShapePopulationPriorImageAware): ...
class nnUNetTrainerShapePopulationPriorImageAware_50epochs(
        Schedule50Epochs, nnUNetTrainerShapePopulationPriorImageAware): ...
class nnUNetTrainerShapePopulationPriorImageAware_250epochs(
        Schedule250Epochs, nnUNetTrainerShapePopulationPriorImageAware): ...
class nnUNetTrainerShapePopulationPriorImageAware_demo(
        DemoSchedule, nnUNetTrainerShapePopulationPriorImageAware): ...
class nnUNetTrainerShapePopulationPriorImageAware_suite(
        SuiteSchedule, nnUNetTrainerShapePopulationPriorImageAware): ...
class nnUNetTrainerShapePopulationPriorImageAware_debug(
        DebugSchedule, nnUNetTrainerShapePopulationPriorImageAware): ...


#: every trainer class defined in this module (what the trainers/ re-export module exposes)
TRAINER_NAMES: tuple[str, ...] = trainer_names(globals())
__all__ = list(TRAINER_NAMES)
