"""A plain (non-editable) install ships the trainers folder that ``nnUNet_extTrainer`` points at.

The editable install of ``make test`` resolves ``trainers/`` in the source tree; users who run
``pip install .`` get a wheel, where the folder must travel as the package
``nnunet_shape_trainers``. This builds that wheel, installs it into a folder of its own and asks
the installed copy, in a fresh interpreter that cannot see the source tree, where its trainers are
and whether nnU-Net's lookup finds them there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # --no-build-isolation: the venv's setuptools builds it, nothing is downloaded
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(out / "dist"), str(REPO)], check=True, capture_output=True, text=True, cwd=out)
    wheels = list((out / "dist").glob("nnunet_shape-*.whl"))
    assert len(wheels) == 1, wheels
    site = out / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                    str(wheels[0])], check=True, capture_output=True, text=True)
    return wheels[0]


def test_wheel_contains_the_reexport_modules_and_the_schema(installed_wheel):
    names = set(zipfile.ZipFile(installed_wheel).namelist())
    for module in ("nnunet_shape/nnunet/trainers/__init__.py",
                   "nnunet_shape/nnunet/trainers/shape_descriptor_trainers.py",
                   "nnunet_shape/nnunet/trainers/shape_descriptor_trainers_from_file.py",
                   "nnunet_shape/descriptor_files/schema_v1.json",
                   "nnunet_shape/nnunet/training/shape_trainers.py"):
        assert module in names, module


def test_trainers_dir_of_a_wheel_install_is_found_by_nnunet(installed_wheel):
    site = installed_wheel.parents[1] / "site"
    probe = (
        "import os, sys\n"
        "from nnunet_shape.cli import trainers_directory\n"
        "folder = trainers_directory()\n"
        "print('FOLDER', folder)\n"
        "os.environ['nnUNet_extTrainer'] = folder\n"
        "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name\n"
        "cls = recursive_find_trainer_class_by_name('nnUNetTrainerShapeDescriptors_debug')\n"
        "print('MODULE', cls.__module__)\n"
    )
    # the installed copy first on the path and the working directory away from the source tree,
    # so that neither the editable install nor the source tree can answer
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("nnUNet_extTrainer", None)
    completed = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                               cwd=site, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    lines = completed.stdout.splitlines()
    found = dict(line.split(" ", 1) for line in lines if line.startswith(("FOLDER ", "MODULE ")))
    folder, module = found["FOLDER"], found["MODULE"]
    assert Path(folder) == site / "nnunet_shape" / "nnunet" / "trainers"
    assert Path(folder, "shape_descriptor_trainers.py").is_file()
    # the class nnU-Net finds is the real one from the installed package (picklable), not a copy
    assert module == "nnunet_shape.nnunet.training.shape_trainers"
