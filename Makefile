# Fresh machine: `make demo` runs the main job on sample data, `make test` runs the tests.
# Each target creates .venv and installs the project (with its dev extra) when needed.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test demo clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	@echo "make demo is not built yet (issue 6: built-in sample data and checkpoints)."

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
