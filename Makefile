# Every target runs from a fresh clone: `make install` sets up .venv and node_modules.
PY ?= .venv/bin/python
PYTHON ?= python3

.PHONY: install demo test lint typecheck contract unit bench reliability gen clean

install: .venv/.installed node_modules/.package-lock.json

.venv/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund

## demo: the local mesh: replicas, DNS, load with a live view, a SIGKILL, a graceful restart,
## a scale-up, the summary, a trace waterfall and a timeline picture (about 1.5 minutes)
demo: install
	$(PY) -m mesh demo $(DEMO_ARGS)

## test: everything CI checks: contract, lint, types, the test suite
test: install contract lint typecheck unit

contract:
	npx --no-install buf lint protos
	$(PY) scripts/genproto.py --check

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck:
	$(PY) -m mypy

unit:
	$(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

## reliability: the fault scenarios behind docs/RELIABILITY.md, which it rewrites (about 3 minutes)
reliability: install
	$(PY) -m bench.reliability

## gen: regenerate meshdemo/ from protos/
gen: install
	$(PY) scripts/genproto.py

## bench: the benchmarks behind docs/PERFORMANCE.md
bench: install
	$(PY) -m bench.service
	$(PY) -m bench.client
	$(PY) -m bench.mesh

clean:
	rm -rf .venv node_modules .pytest_cache .mypy_cache .ruff_cache
