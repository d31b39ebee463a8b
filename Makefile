# make test / make demo work on a fresh clone: they create .venv and install vortex with its extras.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

.PHONY: install lint test demo bench reproduce clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) -m vortex.cli.demo --out $(DEMO_DIR)

bench: $(STAMP)
	$(PY) benchmarks/performance.py

reproduce: $(STAMP)
	$(PY) benchmarks/reproduce.py --quick

clean:
	rm -rf runs build *.egg-info .pytest_cache
