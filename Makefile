# Two commands: `make demo` trains and evaluates the tiny detectors, `make test` runs the checks.
# Both create .venv/ and install everything first when needed (tools/setup_env.sh).
PY := .venv/bin/python

.PHONY: setup demo test lint data

setup:
	@bash tools/setup_env.sh

data: setup
	$(PY) tools/make_synthetic_data.py --out data/lt_synth

demo: setup
	$(PY) tools/demo.py

lint: setup
	$(PY) -m ruff check mmimb tools tests benchmarks
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -q -n auto --dist worksteal
