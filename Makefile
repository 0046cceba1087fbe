# cnn-sentinel: every target sets itself up, so `make test` alone works on a fresh clone.
# Debian/Ubuntu pip route; conda users: `conda env create -f environment.yml` instead.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
EUROSAT_DIR ?=

.PHONY: setup test test-fast lint format bench demo reproduce clean-demo

setup: $(STAMP)

# GDAL's Python bindings must match the system library: install libgdal-dev when
# gdal-config is missing, then build GDAL==$(gdal-config --version) against numpy
# (without build isolation, so its numpy extension `gdal_array` is built too).
$(STAMP): requirements.txt Makefile
	@command -v gdal-config >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgdal-dev gdal-bin; \
	  elif command -v sudo >/dev/null 2>&1; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgdal-dev gdal-bin; \
	  else echo "error: the GDAL library is missing; install libgdal-dev (Debian/Ubuntu) or use conda (environment.yml)."; exit 1; fi; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -c "from osgeo import gdal_array" 2>/dev/null || \
	  $(PY) -m pip install -q --no-build-isolation --no-cache-dir --force-reinstall --no-deps "GDAL==$$(gdal-config --version)"
	$(PY) -c "from osgeo import gdal, gdal_array; print('GDAL', gdal.__version__, 'ready')"
	touch $(STAMP)

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) benchmarks/input_pipeline.py
	$(PY) benchmarks/training_step.py
	$(PY) benchmarks/classify_scene.py

demo: setup
	$(PY) demo.py --demo-dir $(DEMO_DIR) $(if $(EUROSAT_DIR),--eurosat-dir $(EUROSAT_DIR))

reproduce: setup
	@test -n "$(EUROSAT_DIR)" || { echo "error: set EUROSAT_DIR=/path/to/EuroSAT (a folder of class folders)."; exit 2; }
	$(PY) demo.py --demo-dir $(DEMO_DIR) --eurosat-dir $(EUROSAT_DIR)
