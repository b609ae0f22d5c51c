# textseg developer commands. Every target creates .venv when it is missing.
# TORCH is pinned only here (CPU build on the CI machines); pyproject keeps torch>=2.4.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.textseg-installed

.PHONY: demo demo-textmoe test test-all lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

## demo: train and test Semi-MedRef (MMI-UNet) on the embedded synthetic referring dataset (CPU, minutes)
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/textseg fit --config configs/demo_semimedref.yaml

## demo-textmoe: train and test TextMoE on composite synthetic data (X-ray-like + CT-like; CPU, minutes)
demo-textmoe: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/textseg fit --config configs/demo_textmoe.yaml

## test: the default test suite (what CI runs)
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow"

## test-all: include the slow tests
test-all: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest

## lint: ruff (incl. docstrings) and mypy
lint: $(STAMP)
	$(VENV)/bin/ruff check textseg tests benchmarks
	$(VENV)/bin/ruff format --check textseg tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf runs data/synthetic data/synthetic_ct .pytest_cache .mypy_cache .ruff_cache
