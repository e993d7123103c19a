# linewatch developer entry points. The two that users run: `make demo` and `make test`.
#
#   make test  PYTEST_ARGS="tests/unit -q"     pytest, with our own mosquitto/influxd fixtures
#              PYTEST_WORKERS=0                one process (default 2: pytest-xdist workers)
#   make demo  DEMO_ARGS="..."                 the end-to-end demo (configs/demo.yaml)
#   make train TRAIN_ARGS="--out models --overwrite"   retrain over the shipped models
#
# Everything runs from $(VENV), built from constraints.txt, which pins every version.

VENV ?= .venv
PYTHON ?= python3
PYTEST_ARGS ?=
# Each worker starts its own test servers on free ports; most of the suite waits on them.
PYTEST_WORKERS ?= 2
DEMO_ARGS ?=
BENCH_ARGS ?=
TRAIN_ARGS ?=

STAMP := $(VENV)/.installed
# The browser tests drive Debian's chromium: Playwright must never fetch a browser of its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

.DEFAULT_GOAL := help
.PHONY: help venv test lint demo train bench clean

help:
	@echo "make demo    run the demo: $(VENV)/bin/linewatch demo -c configs/demo.yaml \$$DEMO_ARGS"
	@echo "make test    install test servers if missing, then pytest \$$PYTEST_ARGS"
	@echo "make lint    ruff check + mypy --strict on contract/, outage/, agent/, aggregator/, linewatch/ (first step of make test)"
	@echo "make train   retrain every model into var/models (linewatch train all \$$TRAIN_ARGS)"
	@echo "make bench   run the benchmarks (python -m bench \$$BENCH_ARGS)"
	@echo "make venv    only build $(VENV) from constraints.txt"
	@echo "make clean   remove $(VENV), var/ and caches"

venv: $(STAMP)

# Rebuilt whenever the dependencies or their pins change; the stamp is written last, so an
# interrupted install is redone on the next run.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

test: lint
	bash scripts/ensure-servers.sh
	$(VENV)/bin/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

demo: $(STAMP)
	$(VENV)/bin/linewatch demo -c configs/demo.yaml $(DEMO_ARGS)

train: $(STAMP)
	$(VENV)/bin/linewatch train all $(TRAIN_ARGS)

bench: $(STAMP)
	$(VENV)/bin/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var/ build/ .pytest_cache/ .mypy_cache/ .ruff_cache/
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
