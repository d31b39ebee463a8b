# make test / make demo work on a fresh clone: they create .venv and install vortex with its extras.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

.PHONY: install lint test demo bench reproduce clean mutation

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

# Mutation testing (not part of `make test`: about 5 min on 2 cores). Modules, tests and settings: [tool.mutmut] in
# pyproject.toml. A fresh run each time (mutmut keeps a survivor's verdict until its function changes); prints the
# killed share per module and fails below MUTATION_GOAL %. MUTATION_JOBS mutants run at once.
MUTATION_JOBS ?= 2
MUTATION_GOAL ?= 90
mutation: $(STAMP)
	$(PY) -c "import mutmut" 2>/dev/null || $(PY) -m pip install 'mutmut>=3.3'
	rm -rf mutants && mkdir mutants
	@start=$$(date +%s); \
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children $(MUTATION_JOBS) > mutants/run.log 2>&1 \
		|| { tail -c 3000 mutants/run.log; exit 1; }; \
	echo "mutmut run: $$(( $$(date +%s) - start )) s (log: mutants/run.log; survivors: mutmut show NAME)"
	$(PY) tools/mutation_table.py --goal $(MUTATION_GOAL)

clean:
	rm -rf runs build *.egg-info .pytest_cache
