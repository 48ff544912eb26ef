"""The package's layers import one way: core -> network -> descriptor_files -> nnunet -> demo.

``nnunet_shape.core`` is the pure layer: it must import (and work) with nnunetv2 absent, so a
user of the descriptor maths does not need nnU-Net, and nothing of nnU-Net's leaks into the
maths. Every ``import`` statement is read with ``ast`` (also the lazy ones inside functions), so
a violation fails here before it is ever executed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nnunet_shape"

# lower rank = lower layer; a module may import only its own layer and lower ones
LAYER_RANK: dict[str, int] = {"core": 0, "network": 1, "descriptor_files": 2, "point_files": 2, "nnunet": 3, "demo": 4}
# nnU-Net's own packages: never below the descriptor-file layer (whose exporter reads nnU-Net
# datasets with nnU-Net's image readers)
NNUNET_PACKAGES = ("nnunetv2", "batchgenerators", "batchgeneratorsv2")
FIRST_LAYER_WITH_NNUNET = "descriptor_files"


def _layer_of_module(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "nnunet_shape" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYER_RANK else None


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _layered_files() -> list[tuple[str, Path]]:
    return [(layer, path) for layer in LAYER_RANK for path in sorted((PACKAGE / layer).rglob("*.py"))]


def layer_violations() -> list[str]:
    """Every import that goes up a layer, or from core/network into nnU-Net."""
    problems = []
    for layer, path in _layered_files():
        for line, module in _imports(path):
            target = _layer_of_module(module)
            where = f"{path.relative_to(PACKAGE.parent)}:{line}"
            if target is not None and LAYER_RANK[target] > LAYER_RANK[layer]:
                problems.append(f"{where}: layer {layer!r} imports {module} (layer {target!r} is above it)")
            if LAYER_RANK[layer] < LAYER_RANK[FIRST_LAYER_WITH_NNUNET] and module.split(".")[0] in NNUNET_PACKAGES:
                problems.append(f"{where}: layer {layer!r} imports {module}; only {FIRST_LAYER_WITH_NNUNET} "
                                "and above may")
    return problems


def test_every_layer_imports_only_itself_and_lower_layers():
    assert layer_violations() == []


def test_the_layer_check_catches_an_upward_import(tmp_path, monkeypatch):
    """Break the rule on purpose: a core module importing the nnU-Net layer or nnunetv2."""
    fake = tmp_path / "nnunet_shape"
    for layer in LAYER_RANK:
        (fake / layer).mkdir(parents=True)
    (fake / "core" / "bad.py").write_text("def f():\n    from nnunet_shape.nnunet import predict\n"
                                         "    import nnunetv2.paths\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    problems = layer_violations()
    assert len(problems) == 2
    assert "nnunet_shape/core/bad.py:2: layer 'core' imports nnunet_shape.nnunet" in problems[0]
    assert "imports nnunetv2.paths" in problems[1]


CORE_MODULES = sorted(f"nnunet_shape.core.{p.stem}" for p in (PACKAGE / "core").glob("*.py"))

BLOCK_NNUNET = """
import importlib, importlib.abc, sys

class BlockNnunet(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ImportError(f"{{name}} is blocked: nnunet_shape.core must not import it")
        return None

sys.meta_path.insert(0, BlockNnunet())
for module in {modules!r}:
    importlib.import_module(module)
import torch
import nnunet_shape
probs = torch.softmax(torch.randn(1, 3, 6, 7, 8), 1)
loss = nnunet_shape.ShapeDescriptorLoss()(probs, torch.randint(0, 3, (1, 1, 6, 7, 8)), (2.0, 1.0, 1.0))
assert torch.isfinite(loss), loss
print("OK", len({modules!r}), sorted(m for m in sys.modules if m.startswith("nnunet_shape.")))
"""


def test_core_imports_and_runs_with_nnunetv2_blocked():
    code = BLOCK_NNUNET.format(blocked=NNUNET_PACKAGES, modules=CORE_MODULES)
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.startswith(f"OK {len(CORE_MODULES)}")
    assert "nnunet_shape.nnunet" not in completed.stdout


def test_the_block_really_blocks():
    code = BLOCK_NNUNET.format(blocked=NNUNET_PACKAGES, modules=["nnunet_shape.nnunet.training.whole_scan"])
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert completed.returncode != 0
    assert "is blocked" in completed.stderr


@pytest.mark.parametrize("name", ["volume", "centroid", "spread", "surface", "covariance", "ShapeDescriptorLoss",
                                  "extended_log_barrier", "BarrierSchedule", "DescriptorBounds", "RatioPrior",
                                  "EqualCentroidPrior", "bounds_from_targets", "compute_descriptors"])
def test_public_api_is_one_import(name):
    import importlib

    import nnunet_shape

    value = getattr(nnunet_shape, name)
    assert value is getattr(importlib.import_module(nnunet_shape._PUBLIC_API[name]), name)
    assert name in nnunet_shape.__all__ and name in dir(nnunet_shape)


def test_importing_the_package_does_not_import_torch():
    """``nnunet-shape trainers-dir`` must stay fast: the re-exports are lazy."""
    code = "import sys, nnunet_shape, nnunet_shape.cli; print('torch' in sys.modules)"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "False"


def test_unknown_attribute_names_the_package():
    import nnunet_shape

    with pytest.raises(AttributeError, match="nnunet_shape.*perimeter"):
        nnunet_shape.perimeter  # noqa: B018
