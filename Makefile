# `make demo` and `make test` create .venv when it is missing, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.disgorge-installed
# The CPU build of torch this project is tested with; the package itself accepts torch>=2.4.
TORCH ?= torch==2.13.0

.PHONY: venv demo test test-all lint bench catalogue clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/disgorge demo --out demo-output

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

# Regenerates BENCHMARKS.md and benchmarks/results/ from scratch: the classifier scenarios (about 25 minutes on 2
# cores) and the language-model scenarios people and book (about an hour), the reliability probe, then SISA sharding
# and differential privacy on mnist and people (about 50 minutes; it adds its rows to summary.json, which
# `disgorge bench` rewrites, so it runs after it); last, the order `--method auto` tries methods in
# (src/disgorge/methods/auto_order.json) from these results.
bench: $(STAMP)
	rm -rf benchmarks/results
	$(VENV)/bin/disgorge -v bench --out benchmarks/results --report BENCHMARKS.md
	$(PY) benchmarks/reliability.py --out benchmarks/results --report BENCHMARKS.md
	$(PY) benchmarks/sharding.py --out benchmarks/results --report BENCHMARKS.md
	$(PY) benchmarks/audit.py --out benchmarks/results --report BENCHMARKS.md
	$(PY) -c "from disgorge.bench import write_auto_record; write_auto_record('benchmarks/results')"

# Rewrites src/disgorge/methods/catalogue.json (what `disgorge methods` reads without importing torch) after a
# method or its options change; tests/test_methods.py fails until it is rewritten.
catalogue: $(STAMP)
	$(PY) -c "from disgorge.methods.registry import write_catalogue; write_catalogue()"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf $(VENV) demo-output .pytest_cache
