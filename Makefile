# Every target does its own set-up: a fresh clone needs nothing but `make test` / `make demo`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.nnunet-shape-installed

.PHONY: test test-slow test-all test-gpu lint demo demo-weak demo-priors demo-brain bench gpu-check venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch exactly as DEVELOPERS.md says: these builds lie on the machine's disk and torchvision
	# must match torch or nnU-Net's trainer lookup fails.
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The default suite: unit tests plus the short end-to-end runs of nnU-Net's real CLIs.
test: $(STAMP)
	$(PY) -m pytest -m "not slow" tests

# Slower runs (evaluation with two worker processes, the descriptor optimisation over several seeds).
test-slow: $(STAMP)
	$(PY) -m pytest -m "slow" tests

test-all: $(STAMP)
	$(PY) -m pytest tests

# The device-parametrised tests (core, network, loss, postprocessing, a trainer step) on CUDA;
# skipped with a message when there is no GPU. DEVICE=cuda:1 picks another GPU.
DEVICE ?= cuda
test-gpu: $(STAMP)
	$(PY) -m pytest -m "not slow" --device $(DEVICE) -rs tests

# ruff's configuration is in pyproject.toml (line length, import order, pyupgrade)
lint: $(STAMP)
	$(VENV)/bin/ruff check .

# SEEDS=3: every row with 3 training seeds, mean ± std across seeds (about 15 min per seed)
SEEDS ?= 1
demo: $(STAMP)
	$(PY) -m nnunet_shape.demo --output demo_output --seeds $(SEEDS)

# Paper 003's comparison on the same phantoms: full supervision, sparse slices, Weak-Net, descriptors,
# no-image baselines; IoU and Dice against annotation effort (report.md, iou_vs_effort.png)
demo-weak: $(STAMP)
	$(PY) -m nnunet_shape.demo --suite weak --output demo_weak_output

# Anatomical knowledge instead of per-case values: population priors, bounds from clicks, baselines
demo-priors: $(STAMP)
	$(PY) -m nnunet_shape.demo --suite priors --output demo_priors_output

# Table 1 on real brain MRI anatomy (nilearn's MNI152 template, docs/real-anatomy.md) with the row
# V+C+D + image terms; output demo_brain_output. SEEDS=3 as for make demo; HEMISPHERES=1: the four
# classes tissue x hemisphere (output demo_brain_hemispheres_output)
HEMISPHERES ?=
demo-brain: $(STAMP)
	$(PY) -m nnunet_shape.demo --data brain --image-aware --seeds $(SEEDS) $(if $(HEMISPHERES),--hemispheres)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py --output benchmarks/results.md

# Every GPU claim of docs/performance.md on one CUDA GPU, < 8 min: one table, JSON in benchmarks/.
# `benchmarks/gpu_check.py --small` is the CPU rehearsal (run by `make test-slow`).
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py --device $(DEVICE) --output benchmarks/gpu_check.json

clean:
	rm -rf $(VENV) demo_output demo_weak_output demo_priors_output demo_brain_output demo_brain_hemispheres_output \
		.pytest_cache
