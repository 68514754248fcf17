# Fresh machine: `make demo` runs the main job on sample data, `make test` runs the tests.
# Each target creates .venv and installs the project (with its dev extra) when needed.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

DEMO_OUT ?= build/demo

.PHONY: install test demo demo-models clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

# Sample bucket -> local Ray head -> ray job submit segment + evaluate -> overlay.png (see jobs/demo.py).
demo: $(STAMP)
	$(PY) jobs/demo.py --output $(DEMO_OUT)

# Retrain the committed demo checkpoints (models/MODEL_CARD.md); about 45 minutes on 2 CPUs.
demo-models: $(STAMP)
	PY=$(PY) bash models/demo/reproduce.sh

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
