# Fresh machine: `make demo` runs the main job on sample data, `make test` runs the tests.
# Each target creates .venv and installs the project (with its dev extra) when needed.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.9
LOCK := requirements.lock
STAMP := $(VENV)/.installed-stamp
# uv (default) or pip: both install the same locked versions; pip is the fallback where uv cannot be used.
INSTALLER ?= uv

DEMO_OUT ?= build/demo

.PHONY: install test demo demo-models lock clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# How installs stay reproducible: requirements.lock pins every package (dependencies of dependencies
# too) to the version the tests passed with, for Linux x86_64 and Python 3.11. It is used as a
# constraints file (-c): the project and its dev extra are installed from pyproject.toml's ranges,
# each package held to its locked version, so no resolver searches or backtracks (unpinned, pip 26.3
# backtracked ~12 minutes over s3fs / aiobotocore / botocore / ray). uv, pinned and installed into the
# venv by the venv's own pip, downloads in parallel and keeps a cache (~/.cache/uv, or UV_CACHE_DIR)
# that later installs link from. `make install INSTALLER=pip` installs the same lock with plain pip.
# Fresh checkout, shared 2-core machine, `time make install`: unlocked pip 2m00-2m05 (3m27 with an
# empty pip cache); uv with the lock 58s-1m10 with an empty uv cache (pydensecrf2 built from source
# included), 7s with a warm one; pip with the lock 1m35.
$(UV): | $(PY)
	$(PY) -m pip install uv==$(UV_VERSION)

ifeq ($(INSTALLER),pip)
$(STAMP): pyproject.toml $(LOCK) | $(PY)
	$(PY) -m pip install -c $(LOCK) -e ".[dev]"
	touch $(STAMP)
else
# uv reads no pip.conf: where only pip's configuration reaches the package index, it falls back to pip.
$(STAMP): pyproject.toml $(LOCK) | $(UV)
	$(UV) pip install --python $(PY) -c $(LOCK) -e ".[dev]" || $(PY) -m pip install -c $(LOCK) -e ".[dev]"
	touch $(STAMP)
endif

install: $(STAMP)

# Refresh requirements.lock after a change to pyproject.toml's dependencies: versions already in the
# lock are kept where they still fit, new or changed requirements get the newest fitting release.
# `make lock UPGRADE=1` moves every package to its newest allowed release. Then run `make test`
# (it reinstalls from the new lock) and commit requirements.lock with the change that needed it.
lock: | $(UV)
	$(UV) pip compile pyproject.toml --extra dev --python-version 3.11 $(if $(UPGRADE),--upgrade) \
		--custom-compile-command "make lock" -o $(LOCK)

# ruff (rules in pyproject.toml) first: a style error fails in seconds, before the suite's minutes.
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest

# Sample bucket -> local Ray head -> ray job submit segment + evaluate -> overlay.png (see jobs/demo.py).
demo: $(STAMP)
	$(PY) jobs/demo.py --output $(DEMO_OUT)

# Retrain the committed demo checkpoints (models/MODEL_CARD.md); about 75 minutes on 2 CPUs, resumable.
demo-models: $(STAMP)
	PY=$(PY) bash models/demo/reproduce.sh

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
