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

# The venv's own pip, not upgraded: pip 26.3's resolver backtracked for ~12 minutes over this
# dependency set (s3fs / aiobotocore / botocore / ray candidates), Python 3.11's bundled pip 23.2.1
# installs the same versions in ~2 minutes (measured on a fresh checkout, same package cache).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

# Sample bucket -> local Ray head -> ray job submit segment + evaluate -> overlay.png (see jobs/demo.py).
demo: $(STAMP)
	$(PY) jobs/demo.py --output $(DEMO_OUT)

# Retrain the committed demo checkpoints (models/MODEL_CARD.md); about 75 minutes on 2 CPUs, resumable.
demo-models: $(STAMP)
	PY=$(PY) bash models/demo/reproduce.sh

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
