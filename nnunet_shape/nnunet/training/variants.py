"""Training lengths of the nnunet-shape trainers, as nnU-Net names them (``_5epochs``, ...).

Each length is a small mixin that sets the three schedule attributes of
``nnUNetTrainerWholeScan``; every trainer module declares its variants beside the trainer, one
explicit class statement per length (so that ``grep "class nnUNetTrainerShapeDescriptors_demo"``
finds it), e.g. ::

    class nnUNetTrainerSomething_demo(DemoSchedule, nnUNetTrainerSomething): ...

The mixin comes first so that its attributes win over the trainer's. A new length is one more
mixin here, one entry in ``LENGTH_SCHEDULES`` and one class per trainer beside the others
(``tests/test_whole_scan_trainer.py`` checks that every trainer has every length).

Every trainer module ends with ``TRAINER_NAMES = trainer_names(globals())`` and
``__all__ = list(TRAINER_NAMES)``: what its re-export module in ``nnunet_shape/nnunet/trainers``
(``nnUNet_extTrainer``) exposes.
"""

from __future__ import annotations

from collections.abc import Mapping

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class Schedule5Epochs:
    """5 epochs of 250 iterations, 50 validation iterations."""

    training_epochs: int = 5
    iterations_per_epoch: int = 250
    val_iterations_per_epoch: int = 50


class Schedule50Epochs:
    """50 epochs of 250 iterations, 50 validation iterations."""

    training_epochs: int = 50
    iterations_per_epoch: int = 250
    val_iterations_per_epoch: int = 50


class Schedule250Epochs:
    """250 epochs of 250 iterations, 50 validation iterations."""

    training_epochs: int = 250
    iterations_per_epoch: int = 250
    val_iterations_per_epoch: int = 50


class DemoSchedule:
    """``make demo`` (nnunet_shape.demo): every Table-1 row gets this CPU-sized schedule,
    12 epochs of 50 iterations, 2 validation iterations; progress plots after every 4th epoch
    (plotting every epoch cost 12 % of a demo training on 2 CPU cores)."""

    training_epochs: int = 12
    iterations_per_epoch: int = 50
    val_iterations_per_epoch: int = 2
    progress_plot_every: int = 4


class SuiteSchedule:
    """The comparison suites (``make demo-weak``, ``make demo-priors``): 10 epochs of 50 iterations,
    2 validation iterations, progress plots after every 5th epoch -- the demo's iterations cut by a
    sixth so that a suite of six or seven trainings fits 25 minutes on 2 CPU cores
    (docs/weak-points.md, docs/population-priors.md)."""

    training_epochs: int = 10
    iterations_per_epoch: int = 50
    val_iterations_per_epoch: int = 2
    progress_plot_every: int = 5


class DebugSchedule:
    """Smoke tests: one epoch of 3 iterations and one validation iteration."""

    training_epochs: int = 1
    iterations_per_epoch: int = 3
    val_iterations_per_epoch: int = 1


#: class-name suffix -> its schedule
LENGTH_SCHEDULES: dict[str, type] = {
    "_5epochs": Schedule5Epochs,
    "_50epochs": Schedule50Epochs,
    "_250epochs": Schedule250Epochs,
    "_demo": DemoSchedule,
    "_suite": SuiteSchedule,
    "_debug": DebugSchedule,
}


def trainer_names(namespace: Mapping[str, object]) -> tuple[str, ...]:
    """The trainers a module defines, in definition order: the names in ``namespace`` (the module's
    ``globals()``) bound to a subclass of nnU-Net's ``nnUNetTrainer`` whose ``__module__`` is the
    module's (``namespace["__name__"]``).

    Classes the module imports (nnU-Net's trainer, the trainers it builds on) and classes that are
    not trainers (data loaders, transforms, schedules, mixins) are not listed.
    """
    module = namespace["__name__"]
    return tuple(name for name, value in list(namespace.items())
                 if isinstance(value, type) and issubclass(value, nnUNetTrainer) and value.__module__ == module)
